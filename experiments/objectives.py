r"""Architectures and objectives at matched compute (T5 paper, Table 2 style): a decoder with causal LM and
with prefix LM, an encoder with masked LM and with MLM + NSP, an encoder-decoder with span corruption, each
pretrained for the same training FLOPs, then fine-tuned on BBC topic classification with 10% of the labels.

One command (2 workers, one core each):
  python launch.py sweep --config experiments/objectives.py --workdir runs/objectives --max_parallel 2
It writes runs/objectives/objectives.md (the table and paired differences).

Stages (sweeps/stages.py; a re-run skips what is done):
  1. pretrain  every system at size=mini (d_model 128, MLP 512; 4 layers, and 4 + 4 for the
               encoder-decoder) for BUDGET training FLOPs (models.flops_per_token: the encoder-decoder
               per encoder token, its decoder and output projection on the targets only, 29 per 128 inputs;
               prefix LM and masked LM pay for every position whatever their loss reads), so the steps differ.
  2. select    fine-tuning at label fraction 0.1, seed 0, over LRS x the poolings each system may use; the
               best validation accuracy chooses per system.
  3. seeds     the chosen settings at seeds 1 .. SEEDS-1 (seed 0 is the selection run).
Fine-tuning is the label-efficiency ablation's protocol (experiments/label_efficiency.py: batch 16, 50
updates, articles as up to 2 chunks, the best validation checkpoint on test). Systems are compared by the
paired difference of test accuracy over seeds (same label subset and data order per seed).

Expected (measured on the 2-core CPU, an AMD EPYC, 2 workers): 103 minutes of wall time, shared with the
scaling sweep for 87 of them (about 58 minutes alone by its runs' CPU time). Topic test accuracy at
fraction 0.1 (5 seeds): causal LM 0.606, prefix LM 0.476, MLM 0.647, MLM + NSP 0.593, span corruption
0.370; against causal LM: prefix LM -0.131 [-0.182, -0.080], span corruption -0.237 [-0.272, -0.201], the
encoders not resolved. The README's "Objectives at matched compute" has the table, plot and caveats.
Variants: size=tiny (the test's: causal LM and span corruption, one learning rate, 2 seeds).
"""

import math
import os

from lmlab import config as config_lib
from lmlab.report import plots, stats
from lmlab.sweeps import stages

# name -> (pretraining experiment, poolings the fine-tuning may choose from)
SYSTEMS = {
    "decoder_causal_lm": ("gpt.py", ("mean", "last_text")),
    "decoder_prefix_lm": ("gpt.py:objective=prefix_lm", ("mean", "last_text")),
    "encoder_mlm": ("bert.py:nsp=false", ("pooler", "mean")),
    "encoder_mlm_nsp": ("bert.py", ("pooler", "mean")),
    "encdec_span_corruption": ("t5.py", ("mean", "first")),
}
REFERENCE = "decoder_causal_lm"  # the paired differences are against it
BUDGET = 1.2e13  # pretraining FLOPs per system (GPT mini: 337 steps of 32 x 128 tokens)
LRS = (1e-3, 3e-3)
FRACTION = 0.1
SEEDS = 5
TINY = {"systems": ("decoder_causal_lm", "encdec_span_corruption"), "budget": 4e9, "lrs": (1e-3,), "seeds": 2}
_HERE = os.path.dirname(os.path.abspath(__file__))


def _options(arg):
  return config_lib.parse_arg(arg, size="mini")


def get_config(arg=None):
  """The fine-tuning runs' common config (every point names its own experiment)."""
  return stages.experiment_loader(_HERE)(stages.at_size("finetune.py:task=topic", _options(arg).size))


def get_sweep(arg=None):
  size = _options(arg).size
  tiny = size == "tiny"
  systems = TINY["systems"] if tiny else tuple(SYSTEMS)
  budget, lrs, seeds = (TINY["budget"], TINY["lrs"], TINY["seeds"]) if tiny else (BUDGET, LRS, SEEDS)
  protocol = stages.experiment_module(_HERE, "label_efficiency.py")._protocol(size)
  load = stages.experiment_loader(_HERE)

  def pretrain(_):
    points = []
    for system in systems:
      spec = stages.at_size(SYSTEMS[system][0], size)
      steps = stages.steps_for_flops(load(spec), budget)
      points.append({"experiment": spec, "name": f"objpre_{system}", "train.num_steps": steps,
                     "optim.warmup_steps": min(50, max(1, steps // 10)), "train.checkpoint_every": steps,
                     "sample.prompts": ()})
    return points

  def finetune_point(system, seed, lr, pooling, done):
    pretrained = next(r.workdir for r in done if r.overrides.get("name") == f"objpre_{system}")
    return {"experiment": stages.at_size("finetune.py:task=topic", size), "name": f"obj_{system}",
            "init_from": pretrained, "task.label_fraction": FRACTION, "seed": seed, "optim.lr": lr, "finetune.pooling": pooling, **protocol}

  def select(done):
    return [finetune_point(system, 0, lr, pooling, done) for system in systems for lr in lrs
            for pooling in SYSTEMS[system][1][:1 if tiny else None]]

  def run_seeds(done):
    chosen = choose([r for r in done if r.overrides.get("name", "").startswith("obj_")])
    return [finetune_point(system, seed, lr, pooling, done) for system, (lr, pooling) in chosen.items()
            for seed in range(1, seeds)]

  return [stages.Stage("pretrain", pretrain), stages.Stage("select", select), stages.Stage("seeds", run_seeds)]


def choose(runs: list[stages.Result]) -> dict:
  """{system: (lr, pooling)}: the best validation accuracy among each system's seed-0 runs (ties: the
  first in (lr, pooling) order)."""
  seed0 = sorted((r for r in runs if r.summary.get("seed") == 0),
                 key=lambda r: (r.overrides["optim.lr"], r.overrides["finetune.pooling"]))
  chosen = stages.best(seed0, group=lambda r: r.overrides["name"][len("obj_"):],
                       metric=lambda r: r.summary["validation"]["accuracy"])
  return {system: (r.overrides["optim.lr"], r.overrides["finetune.pooling"]) for system, r in chosen.items()}


def results(sweep_dir: str) -> dict:
  """{"pretrain": {system: (steps, FLOPs, validation result)}, "accuracy": {system: {seed: test accuracy}},
  "chosen": {system: (lr, pooling)}} from the finished runs."""
  pretrain, tuned = {}, []
  for path, summary, cfg in stages.finished(sweep_dir):
    name = str(cfg.get("name", ""))
    if name.startswith("objpre_"):
      flops = summary["step"] * cfg["data"]["batch_size"] * cfg["data"]["seq_len"] * summary["flops_per_token"]
      pretrain[name[len("objpre_"):]] = (summary["step"], flops, summary["validation"])
    elif name.startswith("obj_"):
      overrides = {"name": name, "optim.lr": cfg["optim"]["lr"], "finetune.pooling": cfg["finetune"]["pooling"]}
      tuned.append(stages.Result("", overrides, path, summary))
  chosen = choose(tuned)
  accuracy = {}
  for r in tuned:
    system = r.overrides["name"][len("obj_"):]
    if chosen.get(system) == (r.overrides["optim.lr"], r.overrides["finetune.pooling"]):
      accuracy.setdefault(system, {})[r.summary["seed"]] = r.summary["test"]["accuracy"]
  return {"pretrain": pretrain, "accuracy": accuracy, "chosen": chosen}


def report(sweep_dir: str, plots_too: bool = True) -> list[str]:
  """The table (pretraining cost and validation loss of each objective's own targets; test accuracy at
  FRACTION, mean and 95% interval over seeds) and the paired differences against REFERENCE, written to
  objectives.md; objectives.png shows both."""
  found = results(sweep_dir)
  accuracy_rows, difference_rows = [], []
  lines = ["| system | pretraining steps | training FLOPs | validation loss of its own targets (perplexity) | "
           f"topic test accuracy at fraction {FRACTION:g} | chosen lr, pooling |", "|---|---|---|---|---|---|"]
  for system in (s for s in SYSTEMS if s in found["pretrain"]):
    steps, flops, validation = found["pretrain"][system]
    extra = f"; NSP accuracy {validation['nsp_accuracy']:.3f}" if "nsp_accuracy" in validation else ""
    acc = found["accuracy"].get(system, {})
    i = stats.interval(list(acc.values()))
    cell = f"{i['mean']:.3f} [{i['ci_low']:.3f}, {i['ci_high']:.3f}] (n={i['n']})" if acc else "-"
    if acc:
      accuracy_rows.append((system, i["mean"], i["ci_low"], i["ci_high"]))
    chosen = found["chosen"].get(system)
    lines.append(f"| {system} | {steps} | {flops:.2e} | {validation['loss']:.3f} "
                 f"({math.exp(validation['loss']):.1f}){extra} | {cell} | "
                 f"{f'{chosen[0]:g}, {chosen[1]}' if chosen else '-'} |")
  lines += ["", "| a - b (test accuracy, paired over seeds) | difference [95% interval] |", "|---|---|"]
  reference = found["accuracy"].get(REFERENCE, {})
  for system, acc in found["accuracy"].items():
    if system == REFERENCE or not reference:
      continue
    d = stats.paired_difference(acc, reference)
    difference_rows.append((system, d["mean"], d["ci_low"], d["ci_high"]))
    verdict = "a higher" if d["ci_low"] > 0 else "a lower" if d["ci_high"] < 0 else "not resolved"
    lines.append(f"| {system} - {REFERENCE} | {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] "
                 f"(n={d['n']}; {verdict}) |")
  path = os.path.join(sweep_dir, "objectives.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  written = [path]
  if plots_too and accuracy_rows:
    panels = [(f"topic test accuracy at label fraction {FRACTION:g}", accuracy_rows, False)]
    if difference_rows:
      panels.append((f"paired difference against {REFERENCE}", difference_rows, True))
    written.append(plots.categories(panels, "Objectives at matched pretraining FLOPs, then BBC topic "
                                    "fine-tuning", os.path.join(sweep_dir, "objectives.png")))
  return lines + ["wrote " + ", ".join(written)]
