r"""BERT: an encoder-only Transformer pretrained with masked LM (+ next-sentence prediction) on the bundled
BBC News corpus.

Run (2-core CPU; the result is in runs/bert_small):
  python launch.py --config experiments/bert.py:size=small

Expected (measured on the 2-core CPU): masked LM's unigram plateau (a unigram model scores perplexity
~775 on these targets) is left once attention can use relative offsets. size=mini (d_model 128), 600
steps at lr 1e-3: masked-token perplexity 156, accuracy 0.20 (with learned absolute positions: 638 at
step 300, still on the plateau, where rotary is at 323). size=small, 300 steps: 614 (rotary, lr 1e-3)
against 721 at lr 3e-3 and ~750 with learned positions. Next-sentence accuracy stays at chance (0.49-0.50)
in all of them: see the README. Validation also reports the masked-LM loss by what the input showed at
the target ([MASK] / random token / unchanged), where the plateau is visible.
Variants (comma separated after the colon):
  size=tiny|mini|small|base   as in experiments/gpt.py (base: BERT-base scale, for accelerators)
  positions=rotary|learned|sinusoidal|relative   (learned: BERT's own, which stays on the plateau here)
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
  opts = config_lib.parse_arg(arg, size="small", nsp=True, whole_word=False, positions="rotary")
  c = config_lib.sized_config("bert" if opts.nsp else "bert_mlm", opts.size)
  c.model.family = "encoder"
  # The recipe that leaves masked LM's unigram plateau on a CPU budget (README, "BERT off the plateau"):
  # rotary positions (relative offsets inside attention from the first step) and a peak rate of 1e-3.
  c.model.positions = opts.positions
  if opts.size != "base":
    c.optim.lr = 1e-3
  c.objective.name = "mlm_nsp" if opts.nsp else "mlm"
  c.objective.whole_word = opts.whole_word
  c.sample.prompts = ("Shares in the [MASK] rose sharply.", "The [MASK] minister said on [MASK].")
  c.sample.top_k = 5
  return c


def get_sweep():
  """Overrides for `launch.py sweep`: mask rate x whole-word masking."""
  return grid.product(grid.sweep("objective.mask_rate", [0.15, 0.3]),
                      grid.sweep("objective.whole_word", [False, True]))
