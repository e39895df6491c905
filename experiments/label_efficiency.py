r"""Label efficiency (ULMFiT / BERT style): does pretraining help BBC topic classification with few labels?
Each pretrained model (GPT, BERT, LSTM) against the same architecture trained from scratch, and TF-IDF +
linear SVM, at label fractions 0.01 (18 articles) and 0.1 (180), compared by paired differences over seeds.

One command runs it all from a clean clone (pretraining included; 2 workers, one core each):
  python launch.py sweep --config experiments/label_efficiency.py --workdir runs/label_efficiency \
      --max_parallel 2
It writes runs/label_efficiency/label_efficiency.md (the tables) and label_efficiency.png.

Stages (sweeps/stages.py; a re-run skips what is done):
  1. pretrain   GPT (causal LM), BERT (masked LM + NSP, bert.py's rotary recipe) and a 2-layer LSTM (causal
                LM) at size=mini (d_model 128), PRETRAIN_STEPS updates of 32 x 128 tokens each.
  2. select     every fine-tuned system at label fraction 0.1 and seed 0, over the learning rates LRS x
                the poolings it may use (decoder and LSTM: mean or the last text token; BERT: [CLS] through
                its pretrained pooler); the best validation accuracy chooses per system (30 runs).
  3. seeds      the chosen settings at both fractions and seeds 0-4 (at 0.1, seed 0 is the selection run
                itself), and TF-IDF + SVM (C chosen on validation) on the same label subsets.
Fine-tuning protocol (_protocol): batch 16, FINETUNE_STEPS updates (10% warmup, cosine decay), validation
every 25 steps, the best validation checkpoint evaluated on test; articles read as up to 2 chunks of 126
tokens, pooled per chunk and averaged. Every system is selected on the full validation split (211
articles): optimistic with 18 labels, and the same for every system. Within a seed all systems see the
same label subset and data order, so systems are compared by the paired difference over seeds with a 95%
t interval; a claim needs that interval to exclude 0.

Expected (measured on the 2-core CPU, 2 workers): about 60 minutes (pretraining 18 min, selection 13,
seeds ~28). Test accuracy at fractions 0.01 / 0.1, mean of seeds 0-4: GPT pretrained 0.775 / 0.920 against
0.429 / 0.698 from scratch (paired difference +0.347 [+0.283, +0.410] / +0.222 [+0.144, +0.300]); BERT
pretrained 0.350 / 0.581 against 0.355 / 0.239 (0.01 not resolved; +0.342 [+0.273, +0.411] at 0.1); LSTM
0.346 / 0.355 against 0.281 / 0.468 (neither resolved); TF-IDF + SVM 0.718 / 0.946. The README's
label-efficiency section has the tables, the plot and what they mean.
Variants: size=tiny (seconds per run: the test's preset, GPT and BERT only, with a smaller grid).
"""

import os

from lmlab import config as config_lib
from lmlab.report import plots, stats
from lmlab.sweeps import stages

SEEDS = 5
FRACTIONS = (0.01, 0.1)
SELECT_FRACTION = 0.1  # the settings are chosen here (seed 0) and used at every fraction
# (A first pass with 1e-4, 3e-4, 1e-3 put every system's best at 1e-3, the grid's edge, and 1e-4 last.)
LRS = (3e-4, 1e-3, 3e-3)
PRETRAIN_STEPS = 600
FINETUNE_STEPS = 50
# The systems: name -> (experiment of its fine-tuning runs, pretraining experiment or None for the
# from-scratch control, poolings to choose from).
SYSTEMS = {
    "gpt_pretrained": ("family=gpt", "gpt.py", ("mean", "last_text")),
    "gpt_scratch": ("family=gpt", None, ("mean", "last_text")),
    "bert_pretrained": ("family=bert", "bert.py", ("pooler",)),
    "bert_scratch": ("family=bert", None, ("pooler",)),
    "lstm_pretrained": ("family=lstm", "lstm.py", ("mean", "last_text")),
    "lstm_scratch": ("family=lstm", None, ("mean", "last_text")),
}
BASELINE = "tfidf_svm"
PAIRS = (("gpt_pretrained", "gpt_scratch"), ("bert_pretrained", "bert_scratch"),
         ("lstm_pretrained", "lstm_scratch"), ("gpt_pretrained", BASELINE), ("bert_pretrained", BASELINE))


def _options(arg):
  return config_lib.parse_arg(arg, size="mini")


def _protocol(size: str) -> dict:
  if size == "tiny":
    return {"task.max_chunks": 2, "data.batch_size": 8, "finetune.min_steps": 4, "finetune.epochs": 0.1,
            "train.num_steps": 4, "train.eval_every": 2}
  return {"task.max_chunks": 2, "data.batch_size": 16, "finetune.min_steps": FINETUNE_STEPS,
          "finetune.epochs": 1.0, "train.num_steps": FINETUNE_STEPS, "train.eval_every": 25}


def get_config(arg=None):
  """The fine-tuning runs' common config (every point names its own experiment; this is the sweep's base)."""
  return stages.experiment_loader(os.path.dirname(os.path.abspath(__file__)))(
      f"finetune.py:size={_options(arg).size},task=topic")


def get_sweep(arg=None):
  size = _options(arg).size
  tiny = size == "tiny"  # the test's grid: GPT and BERT, one fraction, learning rate and pooling, two seeds
  systems = {k: v for k, v in SYSTEMS.items() if not (tiny and k.startswith("lstm"))}
  seeds = 2 if tiny else SEEDS
  lrs, fractions = ((1e-3,), (0.1,)) if tiny else (LRS, FRACTIONS)
  pretrain_steps = 8 if tiny else PRETRAIN_STEPS

  def pretrain(_):
    return [{"experiment": f"{experiment}:size={size}", "train.num_steps": pretrain_steps}
            for experiment in sorted({e for _, e, _ in systems.values() if e})]

  def finetune_point(name, fraction, seed, lr, pooling, done):
    variant, pretrained, _ = SYSTEMS[name]
    point = {"experiment": f"finetune.py:size={size},task=topic,{variant}", "name": f"le_{name}",
             "task.label_fraction": fraction, "seed": seed, "optim.lr": lr, "finetune.pooling": pooling,
             **_protocol(size)}
    if pretrained:
      point["init_from"] = next(r.workdir for r in done if r.overrides["experiment"].startswith(pretrained))
    return point

  def select(done):
    return [finetune_point(name, SELECT_FRACTION, 0, lr, pooling, done)
            for name, (_, _, poolings) in systems.items() for lr in lrs
            for pooling in (poolings[:1] if tiny else poolings)]

  def run_seeds(done):
    points = []
    for fraction in fractions:
      for system, (lr, pooling) in choose(done, lrs).items():
        for seed in range(seeds):
          points.append(finetune_point(system, fraction, seed, lr, pooling, done))
    for fraction in fractions:
      for seed in range(seeds):
        points.append({"experiment": f"finetune.py:size={size},task=topic,baseline=true", "name": f"le_{BASELINE}",
                       "task.label_fraction": fraction, "seed": seed})
    return points

  return [stages.Stage("pretrain", pretrain), stages.Stage("select", select), stages.Stage("seeds", run_seeds)]


def _runs(sweep_dir: str) -> list[stages.Result]:
  """The finished fine-tuning runs of the sweep directory; overrides: their learning rate and pooling."""
  runs = []
  for path, summary, cfg in stages.finished(sweep_dir):
    if str(summary.get("name", "")).startswith("le_"):  # not a pretraining run
      overrides = {"optim.lr": cfg["optim"]["lr"], "finetune.pooling": cfg["finetune"]["pooling"]}
      runs.append(stages.Result("", overrides, path, summary))
  return runs


def _setting(r: stages.Result) -> tuple:
  return r.overrides.get("optim.lr"), r.overrides.get("finetune.pooling")


def choose(runs: list[stages.Result], lrs=LRS) -> dict:
  """The selection rule, for get_sweep's seeds stage and the report alike: {system: (lr, pooling)} with
  the best validation accuracy among each system's runs at SELECT_FRACTION and seed 0 over lrs x its
  poolings; ties go to the first in grid order."""
  grid = {(f"le_{name}", lr, pooling): i for i, (name, lr, pooling) in enumerate(
      (name, lr, pooling) for name, (_, _, poolings) in SYSTEMS.items() for lr in lrs for pooling in poolings)}
  key = lambda r: (r.summary.get("name"),) + _setting(r)  # pretraining runs have no name: never in the grid
  candidates = sorted((r for r in runs if key(r) in grid and r.summary["seed"] == 0
                       and r.summary["label_fraction"] == SELECT_FRACTION), key=lambda r: grid[key(r)])
  chosen = stages.best(candidates, group=lambda r: r.summary["name"][len("le_"):],
                       metric=lambda r: r.summary["validation"]["accuracy"])
  return {system: _setting(r) for system, r in chosen.items()}


def results(sweep_dir: str) -> dict:
  """{"accuracy": {(system, fraction): {seed: test accuracy}}, "chosen": {system: (lr, pooling)}}: the runs
  of the chosen settings (and the baseline's) at seeds 0..SEEDS-1; other settings' runs (the selection
  grid, or a grid declared earlier) are left out."""
  runs = _runs(sweep_dir)
  chosen = choose(runs)
  table = {}
  for r in runs:
    system = r.summary["name"][len("le_"):]
    if system != BASELINE and chosen.get(system) != _setting(r):
      continue
    if r.summary["seed"] < SEEDS:
      table.setdefault((system, r.summary["label_fraction"]), {})[r.summary["seed"]] = r.summary["test"]["accuracy"]
  return {"accuracy": table, "chosen": chosen}


def report(sweep_dir: str, plots_too: bool = True) -> list[str]:
  """The tables (mean ± 95% interval per system and fraction; paired differences) as markdown lines,
  written to label_efficiency.md, and the plot label_efficiency.png."""
  found = results(sweep_dir)
  acc = found["accuracy"]
  fractions = sorted({f for _, f in acc})
  systems = [s for s in list(SYSTEMS) + [BASELINE] if any((s, f) in acc for f in fractions)]
  lines = ["| system (test accuracy) | " + " | ".join(f"fraction {f:g}" for f in fractions) + " | chosen (lr, pooling) |",
           "|---|" + "---|" * len(fractions) + "---|"]
  for s in systems:
    cells = []
    for f in fractions:
      v = acc.get((s, f), {})
      i = stats.interval(list(v.values()))
      cells.append(f"{i['mean']:.3f} ± {i['ci_high'] - i['mean']:.3f} (n={i['n']})" if v else "-")
    chosen = found["chosen"].get(s)
    lines.append(f"| {s} | " + " | ".join(cells) + f" | {f'{chosen[0]:g}, {chosen[1]}' if chosen else '-'} |")
  lines += ["", "| paired difference (test accuracy) | " + " | ".join(f"fraction {f:g}" for f in fractions) + " |",
            "|---|" + "---|" * len(fractions)]
  for a, b in PAIRS:
    cells = []
    for f in fractions:
      if (a, f) not in acc or (b, f) not in acc:
        cells.append("-")
        continue
      d = stats.paired_difference(acc[(a, f)], acc[(b, f)])
      verdict = "a > b" if d["ci_low"] > 0 else "a < b" if d["ci_high"] < 0 else "no difference resolved"
      cells.append(f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (n={d['n']}; {verdict})")
    lines.append(f"| a={a} - b={b} | " + " | ".join(cells) + " |")
  with open(os.path.join(sweep_dir, "label_efficiency.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  written = [os.path.join(sweep_dir, "label_efficiency.md")]
  if plots_too and fractions:
    series = []
    for s in systems:
      xs = [f for f in fractions if (s, f) in acc]
      ivs = [stats.interval(list(acc[(s, f)].values())) for f in xs]
      series.append((s, xs, [i["mean"] for i in ivs], [i["ci_low"] for i in ivs], [i["ci_high"] for i in ivs]))
    written.append(plots.curves(series, "label fraction", "test accuracy", "BBC topic: label efficiency "
                                "(mean, 95% interval over seeds)", os.path.join(sweep_dir, "label_efficiency.png")))
  return lines + ["wrote " + ", ".join(written)]
