r"""T5: an encoder-decoder Transformer pretrained with span corruption on the bundled BBC News corpus.

Run (2-core CPU; the result is in runs/t5_small):
  python launch.py --config experiments/t5.py:size=small

Expected (measured on the 2-core CPU, size=small, 300 steps, ~6.5 min): target perplexity 178 (loss
5.182; learned positions: 179, 5.189), accuracy 0.29 (sentinels and EOS are easy; the span tokens are
still near the unigram level at this budget, so greedy decoding mostly emits frequent pieces).
Variants (comma separated after the colon):
  size=tiny|small|base        as in experiments/gpt.py; the encoder reads data.seq_len tokens and the
                              decoder the targets length T5's arithmetic gives (29 for 128)
  noise=0.15                  noise density; span=3.0: mean noise span length
  positions=relative|learned|sinusoidal|rotary   relative (default): T5's bucketed relative position bias
                              (32 buckets, max distance 128, one table per stack, none in cross-attention)
Validation metrics: loss, perplexity and accuracy over the target tokens (sentinels, span tokens, EOS).
After training the sample prompts' sentinel spans are decoded; beam search from the command line:
  python launch.py sample --workdir runs/t5_small --prompt "Shares in the <extra_id_0> sharply." --beam_size 4
The sweep compares noise densities and span lengths:
  python launch.py sweep --config experiments/t5.py:size=small
"""

from lmlab import config as config_lib
from lmlab.sweeps import grid


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, size="small", noise=0.15, span=3.0, positions="relative")
  c = config_lib.sized_config("t5", opts.size)
  c.model.family = "encoder_decoder"
  c.objective.name = "span_corruption"
  c.objective.noise_density, c.objective.mean_span_length = opts.noise, opts.span
  c.model.positions = opts.positions
  c.sample.prompts = ("Shares in the <extra_id_0> sharply on <extra_id_1>.",
                      "The <extra_id_0> minister said the <extra_id_1> would rise.")
  c.sample.max_new_tokens = 12
  c.sample.temperature = 0.0  # greedy; --config.sample.beam_size=4 for beam search
  return c


def get_sweep():
  """Overrides for `launch.py sweep`: noise density x mean span length."""
  return grid.product(grid.sweep("objective.noise_density", [0.15, 0.3]),
                      grid.sweep("objective.mean_span_length", [3.0, 8.0]))
