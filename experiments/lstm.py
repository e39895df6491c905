r"""LSTM / GRU language models on the bundled BBC News corpus: the Embedding -> recurrent layers -> Dense
language model of the classic material, through the same pipeline, train step and checkpoints as GPT.

Run (2-core CPU; the result is in runs/lstm_small):
  python launch.py --config experiments/lstm.py:size=small
  python launch.py --config experiments/lstm.py:size=small,cell=gru

Expected (measured on the 2-core CPU, size=small = 2 layers of 256, 300 steps): LSTM validation
perplexity 482 in ~3 min, GRU 356 (GPT small at the same budget: 230); objective=mlm: see the README
table.
Variants (comma separated after the colon):
  size=tiny|mini|small|base   as in experiments/gpt.py; the recurrent width is d_model
  cell=lstm|gru
  objective=causal_lm|mlm     mlm trains a bidirectional LSTM/GRU (forward and backward states
                              combined) with BERT's masking
The state is reset at every document boundary of a packed row. The sweep compares cells and depths:
  python launch.py sweep --config experiments/lstm.py:size=small
"""

from lmlab import config as config_lib
from lmlab.sweeps import grid


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, size="small", cell="lstm", objective="causal_lm")
  name = opts.cell if opts.objective == "causal_lm" else f"{opts.cell}_{opts.objective}"
  c = config_lib.sized_config(name, opts.size)
  c.model.family = "rnn"
  c.model.rnn_cell = opts.cell
  c.objective.name = opts.objective
  c.model.num_layers = 2  # two recurrent layers, as in the classic LSTM LMs (Zaremba et al.)
  if opts.objective == "mlm":
    c.sample.prompts = ("Shares in the [MASK] rose sharply.", "The [MASK] minister said on [MASK].")
    c.sample.top_k = 5
  return c


def get_sweep():
  """Overrides for `launch.py sweep`: cell x number of layers."""
  return grid.product(grid.sweep("model.rnn_cell", ["lstm", "gru"]), grid.sweep("model.num_layers", [1, 2]))
