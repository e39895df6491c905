"""What a sweep varies and its table: the swept axes (config fields that differ across the finished runs),
the configurations (one per combination of axis values, its runs the seeds) and one row per
configuration with the mean, sd and 95% interval of each final metric."""

import dataclasses
import difflib
import math
import numbers
import os

import numpy as np
import pandas as pd

from lmlab.errors import UserError
from lmlab.report import stats
from lmlab.sweeps import points

# Config fields that never define a configuration: seeds are what a configuration is averaged over, and
# the rest only change where and how often a run writes, not its results.
IGNORED = ("seed",) + tuple(f for f in points.NOT_RESULTS if f != "sample")  # the sweep hash's list
IGNORED_PREFIXES = ("sample.",)
# Fine-tuning fields that the system sets (the pretrained run's architecture, objective and tokenizer, or
# the baseline): the `system` column names them once instead of a dozen model.* axes.
SYSTEM_FIELDS = ("init_from", "finetune.baseline", "model.", "objective.", "tokenizer.", "data.seq_len")
# Final metrics: metrics.json's validation (and de-duplicated validation) and test results.
METRIC_PREFIXES = ("validation.", "validation_dedup.", "test.")
BASELINE_NAMES = {"tfidf_svm": "TF-IDF + linear SVM", "lead": "lead (first words of the source)"}


@dataclasses.dataclass
class Config:
  """One configuration: its axis values and its finished runs (one per seed)."""
  values: dict
  runs: pd.DataFrame

  @property
  def label(self) -> str:
    return label(self.values) or "all runs"


def norm(value):
  """The grouping key of a value: numbers as floats (1 == 1.0), NaN as None."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return None
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, numbers.Number):
    return float(value)
  return value


def is_number(value) -> bool:
  """A number that is not NaN or a bool (a numeric axis value)."""
  return norm(value) is not None and isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_))


def sort_key(value):
  value = norm(value)
  if value is None:
    return (0, 0.0, "")
  if isinstance(value, (bool, float)):
    return (1, float(value), "")
  return (2, 0.0, str(value))


def fmt(value) -> str:
  value = norm(value)
  return f"{value:g}" if isinstance(value, float) else str(value)


def label(values: dict) -> str:
  """'positions=rotary, lr=0.001': the last part of each key (the whole key where two share it); a
  system by its name alone."""
  tails = [key.rsplit(".", 1)[-1] for key in values]
  parts = []
  for (key, value), tail in zip(values.items(), tails):
    if key == "system":
      parts.append(fmt(value))
    else:
      parts.append(f"{tail if tails.count(tail) == 1 else key}={fmt(value)}")
  return ", ".join(parts)


def system_name(config: dict) -> str | None:
  """A fine-tuning run's system: the baseline's name, '<family>/<objective> from <pretraining run>' or
  '<family>/<objective> from scratch'; None for a pretraining run. `config` is the flattened config."""
  if config.get("task.name") is None:
    return None
  if config.get("finetune.baseline"):
    return BASELINE_NAMES.get(config["finetune.baseline"], config["finetune.baseline"])
  body = f"{config.get('model.family')}/{config.get('objective.name')}"
  init_from = config.get("init_from")
  if not init_from:
    return f"{body} from scratch"
  path = os.path.normpath(init_from)
  parent, leaf = os.path.split(path)
  if leaf.isdigit() and os.path.basename(parent) == "checkpoints":  # DIR/checkpoints/STEP
    return f"{body} from {os.path.basename(os.path.dirname(parent))} step {leaf}"
  return f"{body} from {leaf}"


def _matches(value, text: str) -> bool:
  """Whether a table cell equals a command-line value: numbers as numbers (1e-3 matches 0.001)."""
  value = norm(value)
  if value is None:
    return text in ("None", "none", "null", "")
  if isinstance(value, bool):
    return text.lower() == str(value).lower()
  if isinstance(value, float):
    try:
      return math.isclose(float(text), value, rel_tol=1e-9)
    except ValueError:
      return False
  return str(value) == text


def _did_you_mean(name: str, options) -> str:
  close = difflib.get_close_matches(name, list(options), n=3)
  return f"; did you mean {', '.join(close)}?" if close else ""


def select(runs: pd.DataFrame, where) -> pd.DataFrame:
  """The runs whose columns match every KEY=VALUE of `where`."""
  for clause in where:
    key, sep, text = clause.partition("=")
    if not sep:
      raise UserError(f"--where {clause!r} is not KEY=VALUE (e.g. --where model.positions=rotary)")
    if key not in runs:
      raise UserError(f"--where {clause!r}: runs.csv has no column {key!r}{_did_you_mean(key, runs.columns)}")
    runs = runs[[_matches(v, text) for v in runs[key]]]
  return runs


def choose_metrics(done: pd.DataFrame, requested) -> list[str]:
  """`requested`, checked; by default every final metric all finished runs have."""
  available = [c for c in done.columns if c.startswith(METRIC_PREFIXES) and done[c].notna().any()]
  if not requested:
    return [m for m in available if done[m].notna().all()]
  for m in requested:
    if m not in available:
      raise UserError(f"--metric {m}: no finished run has it{_did_you_mean(m, available)} (the final metrics "
                      f"are {', '.join(available)})")
  return list(dict.fromkeys(requested))


def _varies(column: pd.Series) -> bool:
  return len({norm(v) for v in column}) > 1


def swept_axes(done: pd.DataFrame, config_columns) -> list[str]:
  """The config fields that differ across the finished runs `done`, except seeds and fields that do not
  change results; for fine-tuning, `system` stands for the fields each system fixes."""
  axes = [key for key in config_columns
          if key not in IGNORED and not key.startswith(IGNORED_PREFIXES) and _varies(done[key])]
  if "system" in done and _varies(done["system"]):
    systems = done["system"].map(norm)
    fixed = [key for key in axes if key.startswith(SYSTEM_FIELDS)
             and not any(_varies(done.loc[systems == s, key]) for s in set(systems))]
    axes = ["system"] + [key for key in axes if key not in fixed]
  return axes


def configurations(done: pd.DataFrame, axes: list[str]) -> list[Config]:
  """The finished runs grouped by their axis values, sorted by them."""
  groups = {}
  rows = done[axes].itertuples(index=False, name=None) if axes else [()] * len(done)  # no axes: one group
  for index, values in zip(done.index, rows):
    groups.setdefault(tuple(norm(v) for v in values), []).append(index)
  keys = sorted(groups, key=lambda key: [sort_key(v) for v in key])
  return [Config(dict(zip(axes, key)), done.loc[groups[key]]) for key in keys]


def summary(configs: list[Config], axes: list[str], metrics: list[str]) -> pd.DataFrame:
  """One row per configuration: its axis values, n (runs), and per metric mean, sd, ci_low, ci_high."""
  rows = []
  for config in configs:
    row = dict(config.values, n=len(config.runs))
    for metric in metrics:
      s = stats.interval(config.runs[metric]) if metric in config.runs else stats.interval([])
      row.update({f"{metric}.{k}": s[k] for k in ("mean", "sd", "ci_low", "ci_high")})
    rows.append(row)
  return pd.DataFrame(rows, columns=axes + ["n"] + [f"{m}.{k}" for m in metrics
                                                      for k in ("mean", "sd", "ci_low", "ci_high")])


def cell(mean: float, sd: float, low: float, high: float) -> str:
  """'2.333 ± 3.8 (sd 1.5)': the mean ± the half-width of its 95% interval; '-' where undefined."""
  if math.isnan(mean):
    return "-"
  half = "-" if math.isnan(low) else f"{(high - low) / 2:.2g}"
  spread = "-" if math.isnan(sd) else f"{sd:.2g}"
  return f"{mean:.4g} ± {half} (sd {spread})"


def markdown(table: pd.DataFrame, axes: list[str], metrics: list[str]) -> str:
  """The summary table as markdown: axis values, n, and 'mean ± half-width (sd)' per metric."""
  shown = pd.DataFrame({axis: table[axis].map(fmt) for axis in axes})
  shown["n"] = table["n"].astype(str)
  for m in metrics:
    shown[m] = [cell(*r) for r in table[[f"{m}.{k}" for k in ("mean", "sd", "ci_low", "ci_high")]].to_numpy()]
  return shown.to_markdown(index=False, disable_numparse=True)
