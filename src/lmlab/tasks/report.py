"""Result tables of fine-tuning sweeps: mean and spread over seeds of a test metric, by system and label
fraction, from the metrics.json files under a directory (a `launch.py sweep` of experiments/finetune.py).

  python -m lmlab.tasks.report runs/label_fraction [--metric accuracy] [--plot label_fraction.png]
"""

import argparse
import collections
import glob
import json
import os

import numpy as np


def load(root: str) -> list[dict]:
  """Every finished run's metrics.json under `root`."""
  paths = sorted(glob.glob(os.path.join(root, "**", "metrics.json"), recursive=True))
  runs = []
  for path in paths:
    with open(path) as f:
      summary = json.load(f)
    if "task" in summary and "test" in summary:
      runs.append(summary)
  return runs


BASELINE_NAMES = {"tfidf_svm": "TF-IDF + linear SVM", "lead": "lead (first words of the source)"}


def system_name(summary: dict) -> str:
  """A baseline's name, '<family>/<objective> from <pretraining dir>' or '<family>/<objective> from scratch'."""
  if summary["system"] in BASELINE_NAMES:
    return BASELINE_NAMES[summary["system"]]
  source = os.path.basename(os.path.normpath(summary["init_from"])) if summary["init_from"] else "scratch"
  return f"{summary['system']} from {source}"


def table(runs: list[dict], metric: str = "accuracy") -> tuple[list[float], dict[str, dict[float, list[float]]]]:
  """(sorted label fractions, {system: {fraction: [test metric of each seed]}})."""
  cells = collections.defaultdict(lambda: collections.defaultdict(list))
  for summary in runs:
    cells[system_name(summary)][summary["label_fraction"]].append(summary["test"][metric])
  fractions = sorted({f for row in cells.values() for f in row})
  return fractions, cells


def format_table(fractions, cells, metric: str) -> str:
  """Markdown: mean ± standard deviation (n seeds) per cell."""
  lines = [f"| system (test {metric}) | " + " | ".join(f"fraction {f:g}" for f in fractions) + " |",
           "|---" * (len(fractions) + 1) + "|"]
  for system, row in cells.items():
    values = []
    for f in fractions:
      v = np.asarray(row.get(f, []), float)
      values.append(f"{v.mean():.3f} ± {v.std():.3f} (n={len(v)})" if len(v) else "-")
    lines.append(f"| {system} | " + " | ".join(values) + " |")
  return "\n".join(lines)


def plot(fractions, cells, metric: str, path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for system, row in cells.items():
    xs = [f for f in fractions if row.get(f)]
    means = [np.mean(row[f]) for f in xs]
    stds = [np.std(row[f]) for f in xs]
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=system)
  ax.set_xscale("log")
  ax.set_xlabel("label fraction")
  ax.set_ylabel(f"test {metric}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("root", help="directory holding fine-tuning runs (searched recursively)")
  parser.add_argument("--metric", default="accuracy", help="test metric: accuracy, macro_f1, rougeL, bleu...")
  parser.add_argument("--plot", default="", help="also save the curves as this PNG")
  args = parser.parse_args(argv)
  runs = load(args.root)
  if not runs:
    raise SystemExit(f"error: no finished fine-tuning runs (metrics.json with a test split) under {args.root}.")
  fractions, cells = table(runs, args.metric)
  print(format_table(fractions, cells, args.metric))
  if args.plot:
    plot(fractions, cells, args.metric, args.plot)
    print(f"saved {args.plot}")


if __name__ == "__main__":
  main()
