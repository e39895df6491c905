r"""BERT: an encoder-only Transformer pretrained with masked LM (+ next-sentence prediction) on the bundled
BBC News corpus.

Run (2-core CPU; the result is in runs/bert_small):
  python launch.py --config experiments/bert.py:size=small

Expected (measured on the 2-core CPU, size=small, 300 steps, ~7.5 min): masked-token perplexity ~750,
accuracy 4%, next-sentence accuracy 0.50 (nsp=false: perplexity 745). After 1.2M tokens the model is
still on masked LM's well-known unigram plateau (a unigram model scores ~775 on these tokens); getting
past it needs a longer run or a learning-rate sweep (see get_sweep for the knobs).
Variants (comma separated after the colon):
  size=tiny|small|base        as in experiments/gpt.py (base: BERT-base scale, for accelerators)
  nsp=true|false              mlm_nsp ([CLS] A [SEP] B [SEP] pairs, 50% from another document, NSP loss
                              on the pooled [CLS]) or plain mlm on packed documents (RoBERTa style)
  whole_word=true|false       mask whole words (a word-start piece and its continuations)
Validation metrics: masked-token loss, perplexity and accuracy (over the 15% selected tokens), and
next-sentence accuracy with nsp. After training, [MASK]s in the sample prompts are filled:
  python launch.py sample --workdir runs/bert_small --prompt "Shares in the [MASK] rose sharply."
The sweep compares mask rates with and without whole-word masking:
  python launch.py sweep --config experiments/bert.py:size=small
"""

from lmlab import config as config_lib
from lmlab.sweeps import grid


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, size="small", nsp=True, whole_word=False)
  c = config_lib.sized_config("bert" if opts.nsp else "bert_mlm", opts.size)
  c.model.family = "encoder"
  c.objective.name = "mlm_nsp" if opts.nsp else "mlm"
  c.objective.whole_word = opts.whole_word
  c.sample.prompts = ("Shares in the [MASK] rose sharply.", "The [MASK] minister said on [MASK].")
  c.sample.top_k = 5
  return c


def get_sweep():
  """Overrides for `launch.py sweep`: mask rate x whole-word masking."""
  return grid.product(grid.sweep("objective.mask_rate", [0.15, 0.3]),
                      grid.sweep("objective.whole_word", [False, True]))
