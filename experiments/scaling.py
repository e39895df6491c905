r"""Scaling (Kaplan et al. 2020 style): validation loss of GPT decoders of 5 sizes trained on the same number
of tokens, fitted with L(N) = a·N^-alpha + c over the non-embedding parameters N, with a bootstrap
interval for alpha over seeds, at two token budgets.

One command (2 workers, one core each):
  python launch.py sweep --config experiments/scaling.py --workdir runs/scaling --max_parallel 2
It writes runs/scaling/scaling.md (the tables and fits) and scaling.png.

The ladder LADDER: (d_model, layers), heads of 16 dimensions, MLP 4 x d_model, the mini tokenizer (4,096
pieces), rows of 128 tokens, batches of 32 rows, learning rate 3e-3 with 10% warmup and a cosine decay to
each run's end (not tuned per size). N counts every parameter outside the embedding tables (tied token
embedding and output projection, learned positions): models.non_embedding_count. Every size sees
TOKENS[i] training tokens (steps = tokens / 4,096), SEEDS seeds each.

BBC News has about 1.07M training tokens at this tokenizer: the larger budget is about two epochs. This is
loss at a fixed, small dataset and a small number of updates, not Kaplan's converged, data-unlimited L(N):
the two budgets show how much the fit depends on how far training got (measured: the bend comes from
optimisation, not from memorising the data; see the README).

Expected (measured on the 2-core CPU, an AMD EPYC, 2 workers): 141 minutes of wall time while other work
shared the cores (its runs' CPU time puts it at about 70 minutes alone). Validation loss from the smallest
to the largest size: 6.54 -> 6.30 after 0.5M tokens (alpha 0.010 [0.007, 0.068], c at its bound 0) and
5.58 -> 5.20 after 2M tokens (alpha 0.31 [0.02, 0.65]: not determined), the largest size level with the
next at 2M. The README's "Scaling" has the table, the plot and why this is not an exponent.
Variants: size=tiny (the test's: 4 small sizes at a few steps, one seed).
"""

import math
import os

import numpy as np

from lmlab import config as config_lib
from lmlab.report import plots, stats
from lmlab.sweeps import stages

LADDER = ((32, 2), (48, 2), (64, 3), (96, 3), (128, 4))
HEAD_DIM = 16
TOKENS = (500_000, 2_000_000)
SEEDS = 3
TINY = {"ladder": ((16, 1), (32, 1), (48, 1), (64, 1)), "tokens": (2_048,), "seeds": 1}
_HERE = os.path.dirname(os.path.abspath(__file__))


def _options(arg):
  return config_lib.parse_arg(arg, size="mini")


def get_config(arg=None):
  """The sweep's base config: the GPT preset whose tokenizer, rows and batches every size shares."""
  return stages.experiment_loader(_HERE)(f"gpt.py:size={_options(arg).size}")


def model_overrides(d_model: int, num_layers: int) -> dict:
  return {"model.d_model": d_model, "model.num_layers": num_layers, "model.num_heads": max(1, d_model // HEAD_DIM),
          "model.mlp_dim": 4 * d_model}


def get_sweep(arg=None):
  size = _options(arg).size
  tiny = size == "tiny"
  ladder, budgets, seeds = (TINY["ladder"], TINY["tokens"], TINY["seeds"]) if tiny else (LADDER, TOKENS, SEEDS)
  base = get_config(arg)
  per_step = base.data.batch_size * base.data.seq_len
  points = []
  for tokens in budgets:
    steps = max(1, round(tokens / per_step))
    for d_model, num_layers in ladder:
      for seed in range(seeds):
        points.append({"experiment": f"gpt.py:size={size}", "name": f"scaling_{tokens}", "seed": seed,
                       **model_overrides(d_model, num_layers), "train.num_steps": steps,
                       "optim.warmup_steps": max(1, steps // 10), "train.eval_every": 0,
                       "train.checkpoint_every": steps, "sample.prompts": ()})
  return [stages.Stage("train", points)]


def non_embedding_parameters(cfg) -> int:
  """N of a run's config (a dict from config.json, or a ConfigDict)."""
  from lmlab import models
  cfg = config_lib.ConfigDict(cfg) if isinstance(cfg, dict) else cfg
  return models.non_embedding_count(models.abstract_params(cfg, cfg.tokenizer.vocab_size)[1])


def results(sweep_dir: str) -> dict:
  """{tokens: {(N, d_model, layers): {seed: validation loss}}} over the finished runs."""
  found = {}
  counts = {}
  for _, summary, cfg in stages.finished(sweep_dir):
    if not str(cfg.get("name", "")).startswith("scaling_"):
      continue
    shape = (cfg["model"]["d_model"], cfg["model"]["num_layers"])
    if shape not in counts:
      counts[shape] = non_embedding_parameters(cfg)
    tokens = summary["step"] * cfg["data"]["batch_size"] * cfg["data"]["seq_len"]
    found.setdefault(tokens, {}).setdefault((counts[shape], *shape), {})[cfg["seed"]] = summary["validation"]["loss"]
  return found


def report(sweep_dir: str, plots_too: bool = True) -> list[str]:
  """Per token budget: the loss per size (mean and 95% interval over seeds) and the fit of L(N) with a
  bootstrap interval for alpha; scaling.md and scaling.png in sweep_dir."""
  found = results(sweep_dir)
  lines, fits = [], {}
  for tokens in sorted(found):
    sizes = sorted(found[tokens])
    lines += [f"Training tokens {tokens:,}:", "", "| d_model x layers | non-embedding parameters N | "
              "validation loss | perplexity |", "|---|---|---|---|"]
    for n, d_model, layers in sizes:
      i = stats.interval(list(found[tokens][(n, d_model, layers)].values()))
      spread = f" [{i['ci_low']:.3f}, {i['ci_high']:.3f}]" if i["n"] > 1 else ""
      lines.append(f"| {d_model} x {layers} | {n:,} | {i['mean']:.3f}{spread} (n={i['n']}) | "
                   f"{math.exp(i['mean']):.1f} |")
    groups = [(n, np.array(list(found[tokens][(n, d, l)].values()), float)) for n, d, l in sizes]
    try:
      fit = stats.power_law(groups)
    except stats.FitError as e:
      lines += ["", f"L(N) not fitted: {e}", ""]
      continue
    fits[tokens] = (fit, groups)
    low, high = fit["alpha_ci"]
    interval = (f"95% bootstrap interval [{low:.3f}, {high:.3f}] over seeds ({fit['resamples']} resamples)"
                if fit["resamples"] else "no interval (one seed per size)")
    lines += ["", f"L(N) = {fit['a']:.3g}·N^-{fit['alpha']:.3f} + {fit['c']:.3f}; alpha {interval}"]
    if fit["c_bound"]:
      lines.append(f"(c is at its bound {fit['c_bound']}: these points do not identify an irreducible loss, and "
                   "alpha is the slope of the curve they do fit)")
    lines.append("")
  path = os.path.join(sweep_dir, "scaling.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  written = [path]
  if plots_too and fits:
    written.append(plots.power_laws(
        [(f"{tokens:,} tokens", fit, groups) for tokens, (fit, groups) in sorted(fits.items())],
        "non-embedding parameters N", "validation loss", "GPT on BBC News: loss against size, the same tokens "
        "per size", os.path.join(sweep_dir, "scaling.png")))
  return lines + ["wrote " + ", ".join(written)]
