r"""GPT: a decoder-only Transformer pretrained with causal LM on the bundled BBC News corpus.

Run (2-core CPU, about 7 minutes including tokenizer training; the result is in runs/gpt_small):
  python launch.py --config experiments/gpt.py:size=small

Expected: validation perplexity about 190-230 after 300 steps (1.2M tokens seen; the spread between
runs is large at this budget); objective=prefix_lm: 279 on the suffix tokens. See the README for the
measured figures. Variants (comma separated after the colon):
  size=tiny|mini|small|base   tiny: seconds, for tests; mini: d_model 128, MLP 512, 900 steps (the
                              ablations' scale); small: the CPU default (4 layers, d_model 256, 4 heads,
                              MLP 1024, rows of 128, batch 32, 4,096 pieces, 300 steps at lr 3e-3); base:
                              GPT-2-small scale (124M-class, bfloat16, scanned layers, FSDP) for
                              accelerators. Every field of each preset: lmlab.config.SIZES.
  objective=causal_lm|prefix_lm   prefix_lm: bidirectional attention over a random prefix of each
                              document, loss on the rest (T5's prefix LM on a decoder-only model).
  positions=learned|sinusoidal|rotary
  norm=layernorm|rmsnorm, mlp=gelu|swiglu
Any field can be overridden on the command line, e.g. --config.optim.lr=1e-3 --config.train.num_steps=600.
The sweep below compares position encodings and learning rates (6 points; `python -m lmlab.report
runs/pos` for the table and plots; README, Sweeps):
  python launch.py sweep --config experiments/gpt.py:size=small --workdir runs/pos --max_parallel 2
"""

from lmlab import config as config_lib
from lmlab.sweeps import grid


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, size="small", objective="causal_lm", positions="learned",
                              norm="layernorm", mlp="gelu")
  c = config_lib.sized_config("gpt" if opts.objective == "causal_lm" else f"gpt_{opts.objective}", opts.size)
  c.model.family = "decoder"
  c.objective.name = opts.objective
  c.model.positions, c.model.norm, c.model.mlp_activation = opts.positions, opts.norm, opts.mlp
  return c


def get_sweep():
  """Overrides for `launch.py sweep`: position encodings x peak learning rates."""
  return grid.product(grid.sweep("model.positions", ["learned", "sinusoidal", "rotary"]),
                      grid.sweep("optim.lr", [1e-3, 3e-3]))


def get_search_space():
  """`launch.py sweep --search`: an Optuna search (TPE, median pruning) over the peak learning rate, weight
  decay and position encoding, minimizing validation loss."""
  return {"params": {"optim.lr": ("log_float", 3e-4, 1e-2), "optim.weight_decay": ("float", 0.0, 0.2),
                     "model.positions": ("categorical", ["learned", "rotary"])},
          "trials": 12, "metric": "validation.loss", "direction": "minimize"}
