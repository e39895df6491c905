"""One report for every sweep, pretraining and fine-tuning alike: the runs under a directory grouped over
seeds into configurations, the mean and 95% interval of their final metrics, validation curves, plots
against each swept axis and power-law fits.

  python -m lmlab.report SWEEP_DIR [--metric M ...] [--where KEY=VALUE ...] [--no-plots]

A run is any directory under SWEEP_DIR holding a config.json (submitit/ and code/ are skipped); it is
finished when it has its metrics.json. Writes into SWEEP_DIR: runs.csv (one row per run), report.md and
report.csv (one row per configuration) and the PNG plots.
"""

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

from lmlab import config as config_lib
from lmlab.errors import UserError
from lmlab.report import plots as plots_lib
from lmlab.report import scaling, stats
from lmlab.report import table as table_lib

SKIP_DIRS = ("submitit", "code")
SPLITS = ("validation", "validation_dedup", "test")  # validation_dedup: config.data.eval_dedup
COUNTS = ("count", "tokens", "documents")  # how many examples or tokens were scored: sizes, not results
VERSIONS = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax", "orbax-checkpoint": "orbax",
            "tensorflow": "tf", "tensorflow-datasets": "tfds"}
# The long table's columns that are not config fields or final metrics, in the order runs.csv shows them.
RUN_COLUMNS = ("run", "state", "system", "code", "versions", "device", "parameters", "train_flops", "step",
               "flops_per_token", "ngrams", "wall_time_s", "curve_metric")


# --- Loading: one row per run.

def find_runs(root: str) -> list[str]:
  """Every directory under root holding a config.json, sorted."""
  found = []
  for path, dirs, files in os.walk(root):
    if "config.json" in files:
      found.append(path)
      dirs[:] = []  # a run's own subdirectories (checkpoints, tensorboard) hold no runs
    else:
      dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
  return sorted(found)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read {path}: {e}") from e


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"model": {"d_model": 64}} -> {"model.d_model": 64}; a list becomes its JSON text (one table cell)."""
  return {key: json.dumps(value) if isinstance(value, list) else value
          for key, value in config_lib.flatten(tree, prefix).items()}


def final_metrics(summary: dict) -> dict:
  """The numeric scalars of metrics.json's validation and test results, as 'validation.loss'...; nested
  per-class scores and confusion matrices are left out."""
  return {f"{split}.{key}": float(value) for split in SPLITS for key, value in (summary.get(split) or {}).items()
          if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in COUNTS}


def _one(values) -> str:
  values = set(values)
  return values.pop() if len(values) == 1 else "mixed" if values else "unknown"


def _code(git: dict) -> str:
  if not git.get("commit"):
    return "unknown"
  return git["commit"][:8] + ("-dirty" if git.get("dirty") else "")


def _versions(versions: dict) -> str:
  return " ".join(f"{short}={versions[name]}" for name, short in VERSIONS.items() if versions.get(name)
                  and not (name == "jaxlib" and versions[name] == versions.get("jax"))) or "unknown"


def _device(devices: dict) -> str:
  if not devices.get("kind"):
    return "unknown"
  processes = devices.get("processes") or 1
  return f"{devices['kind']} x{devices.get('count')}" + (f" ({processes} processes)" if processes > 1 else "")


def provenance(run_dir: str) -> dict:
  """{code, versions, device} from the run's provenance.json: 'mixed' where its starts (a resumed run
  has several) disagree, 'unknown' without the file."""
  path = os.path.join(run_dir, "provenance.json")
  entries = _read_json(path).get("runs", []) if os.path.exists(path) else []
  return {"code": _one(_code(e.get("git") or {}) for e in entries),
          "versions": _one(_versions(e.get("versions") or {}) for e in entries),
          "device": _one(_device(e.get("devices") or {}) for e in entries)}


def load_run(root: str, run_dir: str) -> dict:
  """The run's long-table row: run columns, final metrics, then the flattened config."""
  config = flatten(_read_json(os.path.join(run_dir, "config.json")))
  row = {"run": os.path.relpath(run_dir, root), "state": "incomplete", "system": table_lib.system_name(config)}
  row.update(provenance(run_dir))
  path = os.path.join(run_dir, "metrics.json")
  if os.path.exists(path):
    summary = _read_json(path)
    row.update(final_metrics(summary), state="done", curve_metric=summary.get("metric", "loss"))
    row.update({k: summary[k] for k in ("parameters", "step", "flops_per_token", "ngrams", "wall_time_s")
                if k in summary})
    if "flops_per_token" in summary and "step" in summary:
      # flops_per_token already counts forward + backward (6 N + attention: transformer.flops_per_token,
      # recurrent.flops_per_token), per token of a data.seq_len row: no factor 3 here.
      row["train_flops"] = (summary["step"] * config.get("data.batch_size", np.nan)
                            * config.get("data.seq_len", np.nan) * summary["flops_per_token"])
  return {**row, **config}


def load_runs(root: str) -> pd.DataFrame:
  """The long table: one row per run under root (finished or not)."""
  frame = pd.DataFrame([load_run(root, d) for d in find_runs(root)])
  if frame.empty:
    return pd.DataFrame(columns=["run", "state"])
  if frame["system"].isna().all():
    frame = frame.drop(columns="system")  # no fine-tuning run
  metrics = [c for c in frame.columns if c.startswith(table_lib.METRIC_PREFIXES)]
  first = [c for c in RUN_COLUMNS if c in frame] + metrics
  return frame[first + [c for c in frame.columns if c not in first]]


def config_columns(runs: pd.DataFrame) -> list[str]:
  return [c for c in runs.columns if c not in RUN_COLUMNS and not c.startswith(table_lib.METRIC_PREFIXES)]


def read_log(run_dir: str) -> list[dict]:
  """metrics.jsonl's rows by step, the last one per (split, step): a resumed run logs again the steps
  after its last checkpoint, and the last row is the one the run went on from."""
  path = os.path.join(run_dir, "metrics.jsonl")
  rows = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue  # a run killed while writing leaves a torn last line
        rows[(row.get("split"), row.get("step"))] = row
  return sorted(rows.values(), key=lambda r: r.get("step", 0))


def _nothing_finished(root: str, runs: pd.DataFrame, selected: pd.DataFrame, where) -> str:
  head = f"no finished runs (metrics.json) under {root}"
  if not os.path.isdir(root):
    return f"{head}; it is not a directory"
  if runs.empty:
    return f"{head}; it holds no run directory (one with a config.json)"
  if where and (runs["state"] == "done").any():
    return f"{head} matching --where {' '.join(where)}; runs.csv lists the runs and their columns"
  return f"{head}; its {len(runs)} runs are incomplete (still running, or stopped: rerun to resume them)"


def curve_sets(root: str, configs: list[table_lib.Config]) -> dict:
  """{metric: [(configuration label, steps, mean, low, high, FLOPs per step or NaN)]}: each configuration's
  validation curve (pretraining: loss; fine-tuning: the metric that picks its checkpoint) over its seeds,
  at the steps all of them evaluated."""
  sets = {}
  for config in configs:
    curves = {}
    for _, run in config.runs.iterrows():
      metric = run["curve_metric"]
      curve = {r["step"]: r[metric] for r in read_log(os.path.join(root, run["run"]))
               if r.get("split") == "eval" and metric in r}
      if curve:
        curves.setdefault(metric, []).append(curve)
    first = config.runs.iloc[0]  # the seeds of a configuration share batch, seq_len and model
    flops = first.get("train_flops", np.nan) / first["step"] if first.get("step") else np.nan
    for metric, seeds in curves.items():
      steps, mean, low, high = stats.band(seeds)
      if len(steps):
        sets.setdefault(metric, []).append((config.label, steps, mean, low, high, flops))
  return sets


def report(root: str, metrics=None, where=(), plots: bool = True) -> dict:
  """Reads the runs under root, writes runs.csv, report.md, report.csv and (plots=True) the PNGs there.

  metrics: final metrics to report (default: every one all finished runs have); where: KEY=VALUE filters
  on the long table's columns. Returns {runs (the selected long table), table (one row per
  configuration), markdown (what the command line prints), axes, metrics, warnings, fits, paths (every
  file written), plots}. Raises UserError when there is nothing to report.
  """
  runs = load_runs(root)
  paths = []
  if not runs.empty:
    runs.to_csv(os.path.join(root, "runs.csv"), index=False)
    paths.append(os.path.join(root, "runs.csv"))
  selected = table_lib.select(runs, where)
  done = selected[selected["state"] == "done"]
  if done.empty:
    raise UserError(_nothing_finished(root, runs, selected, where))
  metrics = table_lib.choose_metrics(done, metrics)
  axes = table_lib.swept_axes(done, config_columns(runs))
  warnings = []
  for column, what in (("code", "versions of the code"), ("versions", "sets of library versions")):
    values = sorted(set(done[column]))
    if len(values) > 1:  # never average across them silently: they become an axis of the table
      warnings.append(f"warning: the finished runs come from {len(values)} {what} ({', '.join(values)}); "
                      f"'{column}' is an axis of the table (keep one with --where {column}=...)")
      axes.append(column)
  configs = table_lib.configurations(done, axes)
  summary = table_lib.summary(configs, axes, metrics)
  fits, notes = scaling.power_laws(configs, axes, metrics)
  title = os.path.basename(os.path.abspath(root))
  figures = plots_lib.figures(root, title, curve_sets(root, configs), summary, axes, metrics, fits) if plots else []

  where_text = f" matching --where {' '.join(where)}" if where else ""
  lines = [f"# {title}: {len(configs)} configurations",
           f"{len(done)} finished runs{where_text} of {len(runs)} under {root}; axes: {', '.join(axes) or 'none'}.",
           *warnings, "", table_lib.markdown(summary, axes, metrics), "",
           "Cells: mean ± half-width of the 95% Student-t interval over the configuration's runs (seeds), and "
           "their standard deviation; '-': one run, no interval.", *(f["line"] for f in fits), *notes]
  text = "\n".join(lines)
  with open(os.path.join(root, "report.md"), "w") as f:
    f.write(text + "\n\n" + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in figures))
  summary.to_csv(os.path.join(root, "report.csv"), index=False)
  paths += [os.path.join(root, "report.md"), os.path.join(root, "report.csv")] + figures
  return {"runs": selected, "table": summary, "markdown": text, "axes": axes, "metrics": metrics,
          "warnings": warnings, "fits": fits, "paths": paths, "plots": figures}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m lmlab.report", description="The report of a sweep: tables "
                                   "over seeds, curves, plots against each swept axis and power-law fits.")
  parser.add_argument("root", metavar="SWEEP_DIR", help="directory holding the runs (searched recursively)")
  parser.add_argument("--metric", action="append", metavar="NAME",
                      help="final metric to report, e.g. validation.loss or test.accuracy (repeatable; default: all)")
  parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                      help="keep only runs whose runs.csv column KEY equals VALUE, e.g. code=1a2b3c4d (repeatable)")
  parser.add_argument("--no-plots", action="store_true", help="write the tables only")
  args = parser.parse_args(argv)
  try:
    result = report(args.root, args.metric, args.where, plots=not args.no_plots)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(result["markdown"])
  for path in result["paths"]:
    print(f"wrote {path}")
