r"""Model families at matched compute: Kneser-Ney n-grams, LSTM, GRU and Transformer language models on the
same tokenizer and the same validation targets, validation perplexity against training FLOPs.

One command (2 workers, one core each):
  python launch.py sweep --config experiments/families.py --workdir runs/families --max_parallel 2
It writes runs/families/families.md (the tables) and families.png (perplexity against FLOPs, on the whole
validation split and on its de-duplicated part).

The systems, all at size=mini (the 4,096-piece tokenizer, rows of 128 tokens, batches of 32 rows):
  kn3, kn4, kn5   interpolated modified Kneser-Ney (experiments/ngram.py): counts, no training FLOPs
  transformer     GPT (experiments/gpt.py): 4 layers, d_model 128, MLP 512
  lstm, gru       experiments/lstm.py: 2 recurrent layers of 128
Each neural family trains at the compute budgets BUDGETS (training FLOPs as lmlab counts them,
models.flops_per_token: 6 per matmul parameter per token, plus the Transformer's attention, 12 x layers
x d_model x seq_len per token; embedding lookups free, the output projection counted): the number of
steps is the budget divided by FLOPs per step, so the families see different numbers of tokens. Every
run has its own cosine schedule to its end (10% warmup) at mini's learning rate 3e-3 (not tuned per family
or budget: see the README). SEEDS seeds at SEEDS_BUDGET (same data order per seed across families), one
seed at the other budgets.

Validation is the packed rows of the validation split for every system (the n-gram scores exactly the
neural models' targets), and its de-duplicated part: the validation articles of which fewer than half
the 8-token shingles occur in the training split (config.data.eval_dedup, data/dedup.py).

Expected (measured on the 2-core CPU, an AMD EPYC at ~60 GFLOP/s per core, 2 workers): 79 minutes.
Validation perplexity at 2e12 / 6e12 (mean of 5 seeds) / 1.8e13 FLOPs: Transformer 747 / 436 / 159, GRU
737 / 426 / 162, LSTM 791 / 599 / 219; Kneser-Ney 3/4/5-gram 82.1 / 69.9 / 66.8. De-duplicated (194 of 211
articles): n-grams 95.3 / 87.0 / 85.2, neural models within ~1% of their full-split figures. At 6e12:
Transformer - LSTM -0.318 nats [-0.429, -0.207], Transformer - GRU not resolved. The README's "Model
families at matched compute" has the tables, the plot and what they mean.
Variants: size=tiny (the test's: seconds per run, Transformer and LSTM at one budget, 2 seeds, kn3).
"""

import math
import os

import numpy as np

from lmlab import config as config_lib
from lmlab.report import plots, stats
from lmlab.sweeps import stages

NEURAL = {"transformer": "gpt.py", "lstm": "lstm.py:cell=lstm", "gru": "lstm.py:cell=gru"}
NGRAM_ORDERS = (3, 4, 5)
BUDGETS = (2e12, 6e12, 1.8e13)  # training FLOPs per run
SEEDS_BUDGET = 6e12
SEEDS = 5
DEDUP = 0.5  # config.data.eval_dedup: a validation article is a near-duplicate at >= half its shingles seen
PAIRS = (("transformer", "lstm"), ("transformer", "gru"), ("gru", "lstm"), ("transformer", "kn5"),
         ("lstm", "kn5"))
TINY = {"neural": ("transformer", "lstm"), "orders": (3,), "budgets": (2e9,), "seeds": 2}
_HERE = os.path.dirname(os.path.abspath(__file__))


def _options(arg):
  return config_lib.parse_arg(arg, size="mini")


def get_config(arg=None):
  """The sweep's base config (every point names its own experiment)."""
  return stages.experiment_loader(_HERE)(stages.at_size("gpt.py", _options(arg).size))


def get_sweep(arg=None):
  size = _options(arg).size
  tiny = size == "tiny"
  neural = TINY["neural"] if tiny else tuple(NEURAL)
  budgets, orders = (TINY["budgets"], TINY["orders"]) if tiny else (BUDGETS, NGRAM_ORDERS)
  seeds_budget, seeds = (budgets[0], TINY["seeds"]) if tiny else (SEEDS_BUDGET, SEEDS)
  load = stages.experiment_loader(_HERE)
  points = [{"experiment": stages.at_size(f"ngram.py:order={n}", size), "name": f"fam_kn{n}", "data.eval_dedup": DEDUP}
            for n in orders]
  for family in neural:
    spec = stages.at_size(NEURAL[family], size)
    cfg = load(spec)
    for budget in budgets:
      steps = stages.steps_for_flops(cfg, budget)
      for seed in range(seeds if budget == seeds_budget else 1):
        points.append({"experiment": spec, "name": f"fam_{family}", "seed": seed, "data.eval_dedup": DEDUP,
                       "train.num_steps": steps, "optim.warmup_steps": max(1, steps // 10),
                       "train.eval_every": 0, "train.checkpoint_every": steps, "sample.prompts": ()})
  return [stages.Stage("train", points)]


def results(sweep_dir: str) -> dict:
  """{(system, split): {budget or None: {seed: loss}}} for split validation / validation_dedup (budget
  None for the n-grams), and {system: {budget: (steps, train FLOPs)}}, from the finished runs."""
  losses, cost = {}, {}
  for _, summary, cfg in stages.finished(sweep_dir):
    system = str(cfg.get("name", ""))
    if not system.startswith("fam_"):
      continue
    system = system[len("fam_"):]
    budget = None
    if "flops_per_token" in summary:
      flops = summary["step"] * cfg["data"]["batch_size"] * cfg["data"]["seq_len"] * summary["flops_per_token"]
      budget = _nearest_budget(flops)
      cost.setdefault(system, {})[budget] = (summary["step"], flops)
    for split in ("validation", "validation_dedup"):
      if split in summary:
        losses.setdefault((system, split), {}).setdefault(budget, {})[cfg["seed"]] = summary[split]["loss"]
  return {"loss": losses, "cost": cost}


def _nearest_budget(flops: float) -> float:
  """The declared budget a run spent (steps are rounded, so a run's FLOPs are within a step of it)."""
  declared = BUDGETS + TINY["budgets"]
  return min(declared, key=lambda b: abs(math.log(flops / b)))


def _cell(losses: dict) -> str:
  i = stats.interval(list(losses.values()))
  if i["n"] == 1:
    return f"{math.exp(i['mean']):.1f}"
  return f"{math.exp(i['mean']):.1f} [{math.exp(i['ci_low']):.1f}, {math.exp(i['ci_high']):.1f}] (n={i['n']})"


def report(sweep_dir: str, plots_too: bool = True) -> list[str]:
  """Perplexity per system and budget (mean over seeds, 95% interval from the loss), paired loss
  differences at the seeds' budget; families.md and families.png in sweep_dir."""
  found = results(sweep_dir)
  losses, cost = found["loss"], found["cost"]
  systems = sorted({s for s, _ in losses}, key=lambda s: (s in cost, s))
  lines = ["| system | training FLOPs | steps | validation perplexity | de-duplicated validation perplexity |",
           "|---|---|---|---|---|"]
  for s in systems:
    for budget in sorted(losses[(s, "validation")], key=lambda b: b or 0):
      steps, flops = (str(cost[s][budget][0]), f"{cost[s][budget][1]:.2e}") if budget else ("-", "- (counts)")
      dedup = losses.get((s, "validation_dedup"), {}).get(budget)
      lines.append(f"| {s} | {flops} | {steps} | {_cell(losses[(s, 'validation')][budget])} | "
                   f"{_cell(dedup) if dedup else '-'} |")
  seeds_budget = max((b for (s, _), per in losses.items() for b, v in per.items() if b and len(v) > 1), default=None)
  lines += ["", f"Paired differences of validation loss (nats; a - b, 95% interval over seeds) at "
            f"{seeds_budget or 0:.2e} training FLOPs (the n-gram's loss is the same for every seed):", "",
            "| a - b | validation | de-duplicated validation |", "|---|---|---|"]
  for a, b in PAIRS:
    cells = []
    for split in ("validation", "validation_dedup"):
      la = losses.get((a, split), {}).get(seeds_budget if a in cost else None)
      lb = losses.get((b, split), {}).get(seeds_budget if b in cost else None)
      if not la or not lb:
        cells.append("-")
        continue
      if b not in cost:  # a count-based model: one value, paired with every seed
        lb = {seed: next(iter(lb.values())) for seed in la}
      d = stats.paired_difference(la, lb)
      verdict = "a lower" if d["ci_high"] < 0 else "b lower" if d["ci_low"] > 0 else "not resolved"
      cells.append(f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (n={d['n']}; {verdict})")
    if any(c != "-" for c in cells):
      lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
  path = os.path.join(sweep_dir, "families.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  written = [path]
  if plots_too and cost:
    written += [_plot(losses, cost, split, sweep_dir) for split in ("validation", "validation_dedup")
                if any(k[1] == split for k in losses)]
  return lines + ["wrote " + ", ".join(written)]


def _plot(losses: dict, cost: dict, split: str, sweep_dir: str) -> str:
  span = [min(min(b for b in c) for c in cost.values()), max(max(b for b in c) for c in cost.values())]
  series = []
  for s in sorted({s for s, sp in losses if sp == split}):
    per = losses[(s, split)]
    if s in cost:
      xs = sorted(per)
      ivs = [stats.interval(list(per[b].values())) for b in xs]
      x = [cost[s][b][1] for b in xs]
      mean, low, high = ([math.exp(i[k]) if i["n"] > 1 or k == "mean" else np.nan for i in ivs]
                         for k in ("mean", "ci_low", "ci_high"))
      series.append((s, x, mean, low, high))
    else:  # an n-gram: a level line across the budgets (its counting costs no training FLOPs)
      value = math.exp(next(iter(per[None].values())))
      series.append((f"{s} (Kneser-Ney, counts)", span, [value] * 2, [np.nan] * 2, [np.nan] * 2))
  what = "validation" if split == "validation" else "de-duplicated validation"
  name = "families.png" if split == "validation" else "families_dedup.png"
  return plots.curves(series, "training FLOPs", f"{what} perplexity", f"Model families at matched compute: "
                      f"{what} perplexity (95% CI over seeds)", os.path.join(sweep_dir, name), log=True)
