r"""The count-based baseline: an interpolated Kneser-Ney n-gram model over the same sentencepiece tokens,
scored on exactly the validation tokens the causal neural models score (same packed rows, same targets),
so its perplexity sits in the same table.

Run (2-core CPU, seconds after the tokenizer; the result is in runs/ngram_small/metrics.json):
  python launch.py --config experiments/ngram.py:size=small

Expected (measured on the 2-core CPU, size=small): 4-gram perplexity ~70 and 5-gram ~67 on the GPT's
validation tokens (GPT small after 1.2M tokens: 230); fit + score take a few seconds.
Variants: size=tiny|small|base (the tokenizer and rows of that size), order=N (default 4).
The sweep compares orders:
  python launch.py sweep --config experiments/ngram.py:size=small
"""

from lmlab import config as config_lib
from lmlab.sweeps import grid


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, size="small", order=4)
  c = config_lib.sized_config("ngram", opts.size)
  c.model.family = "ngram"
  c.model.ngram_order = opts.order
  return c


def get_sweep():
  """Overrides for `launch.py sweep`: the n-gram order."""
  return grid.sweep("model.ngram_order", [2, 3, 4, 5])


def get_search_space():
  """`launch.py sweep --search`: the order by Optuna (a toy search: seconds per trial; used by the tests)."""
  return {"params": {"model.ngram_order": ("int", 2, 6)}, "trials": 4, "metric": "validation.loss",
          "direction": "minimize"}
