"""The report's figures (matplotlib's Agg canvas, no display): validation curves with their seed bands,
final metrics against a swept axis, a power-law fit on log-log axes, and systems side by side. Each
function writes one PNG and returns its path."""

import math
import os
import re

import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmlab.report import stats
from lmlab.report import table as table_lib

MAX_SERIES = 12  # more lines than this are unreadable: the rest are left out and the title says so
MAX_PANELS = 6


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def _log_log(ax) -> None:
  ax.set_xscale("log")
  ax.set_yscale("log")
  for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
    axis(ticker.FormatStrFormatter("%.3g"))  # losses span less than a decade: 1.6, not 1.6 x 10^0


def _capped(series: list, title: str) -> tuple[list, str]:
  if len(series) > MAX_SERIES:
    title += f"\n(first {MAX_SERIES} of {len(series)} series; narrow them with --where)"
  return series[:MAX_SERIES], title


def curves(series: list[tuple], xlabel: str, ylabel: str, title: str, path: str, log: bool = False) -> str:
  """series: [(label, x, mean, low, high)]: a line per configuration and its 95% band over seeds (none
  where a configuration has one seed: its bounds are NaN); log: log-log axes."""
  fig = _figure()
  ax = fig.add_subplot()
  series, title = _capped(series, title)
  for name, x, mean, low, high in series:
    (line,) = ax.plot(x, mean, lw=1.2, label=name, marker="o" if len(x) <= 10 else None, ms=3)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
  if log:
    _log_log(ax)
  ax.set(xlabel=xlabel, ylabel=ylabel)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  return _save(fig, path)


def final_vs_axis(summary, axis: str, others: list[str], metrics: list[str], title: str, path: str) -> str:
  """One panel per metric: its mean and 95% interval against `axis`, one series per combination of the
  `others` axes. A numeric axis is drawn as numbers (log when positive over more than a decade), any
  other as categories."""
  values = list(summary[axis])
  numeric = all(table_lib.is_number(v) for v in values)
  if numeric:
    log = min(values) > 0 and max(values) / min(values) > 10
  else:
    categories = sorted({table_lib.norm(v) for v in values}, key=table_lib.sort_key)
    position = {v: i for i, v in enumerate(categories)}
  groups = {}
  keys = summary[others].itertuples(index=False, name=None) if others else [()] * len(summary)
  for i, key in enumerate(keys):
    groups.setdefault(tuple(table_lib.norm(v) for v in key), []).append(i)
  series, title = _capped(list(groups.items()), title)
  metrics = metrics[:MAX_PANELS]
  cols = min(len(metrics), 3)
  rows = math.ceil(len(metrics) / cols)
  fig = _figure(4.2 * cols, 3.4 * rows + 0.4)
  for p, metric in enumerate(metrics):
    ax = fig.add_subplot(rows, cols, p + 1)
    for k, (key, index) in enumerate(series):
      part = summary.iloc[index]
      mean = part[f"{metric}.mean"].to_numpy(float)
      half = np.nan_to_num((part[f"{metric}.ci_high"] - part[f"{metric}.ci_low"]).to_numpy(float) / 2)
      if numeric:
        x = part[axis].to_numpy(float)
      else:  # side by side within a category, so that error bars do not hide each other
        shift = 0.3 * (k - (len(series) - 1) / 2) / len(series)
        x = np.array([position[table_lib.norm(v)] for v in part[axis]]) + shift
      name = table_lib.label(dict(zip(others, key))) or metric
      # Lines join numeric values only: categories have no order to follow.
      ax.errorbar(x, mean, yerr=half, marker="o", ms=4, capsize=3, lw=1, ls="-" if numeric else "none",
                  label=name)
    if numeric and log:
      ax.set_xscale("log")
    if not numeric:
      ax.set_xticks(range(len(categories)), [table_lib.fmt(c) for c in categories], rotation=20, ha="right",
                    fontsize=7)
    ax.set_xlabel(axis, fontsize=8)
    ax.set_title(metric, fontsize=9)
    ax.grid(alpha=0.3)
    if p == 0 and others:
      ax.legend(fontsize=6)
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def _save_log_log(fig, ax, xlabel: str, ylabel: str, title: str, path: str) -> str:
  _log_log(ax)
  low, high = ax.get_xlim()
  if high > 10 * low:  # over a decade: label the decades only, or the minor labels overlap
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set(xlabel=xlabel, ylabel=ylabel)
  ax.set_title(title + " (mean and 95% CI over seeds)", fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  return _save(fig, path)


def power_law(x, mean, low, high, fit: dict, xlabel: str, ylabel: str, title: str, path: str) -> str:
  """The configurations' means with their 95% intervals and the fitted L = a·x^-alpha + c, log-log; the
  points fitted (the lowest at each x) filled, the others hollow."""
  fig = _figure()
  ax = fig.add_subplot()
  x, mean = np.asarray(x, float), np.asarray(mean, float)
  yerr = np.nan_to_num(np.array([mean - np.asarray(low, float), np.asarray(high, float) - mean]))
  lowest = dict(zip(fit["x"], fit["y"]))
  fitted = np.array([np.isclose(yi, lowest[xi], rtol=1e-12) for xi, yi in zip(x, mean)])
  for keep, style, name in ((fitted, {}, "fitted: the best configuration at each x"),
                            (~fitted, {"mfc": "none"}, "other configurations")):
    if keep.any():
      ax.errorbar(x[keep], mean[keep], yerr=yerr[:, keep], fmt="o", ms=4, capsize=3, color="C0", label=name,
                  **style)
  grid = np.geomspace(x.min(), x.max(), 200)
  ax.plot(grid, fit["a"] * grid ** -fit["alpha"] + fit["c"], color="C1", lw=1.2,
          label=f"{fit['a']:.3g}·{xlabel}^-{fit['alpha']:.3f} + {fit['c']:.3g}")
  ax.axhline(fit["c"], ls=":", color="gray", lw=1, label=f"c = {fit['c']:.3g}")
  return _save_log_log(fig, ax, xlabel, ylabel, title, path)


def power_laws(series: list[tuple], xlabel: str, ylabel: str, title: str, path: str) -> str:
  """Several fits on one log-log plot: series = [(label, stats.power_law's fit, its groups [(x, values over
  seeds)])], each as its means with 95% intervals and its fitted curve, in one colour."""
  fig = _figure()
  ax = fig.add_subplot()
  for k, (label, fit, groups) in enumerate(series):
    x = np.array([xi for xi, _ in groups], float)
    ivs = [stats.interval(v) for _, v in groups]
    mean = np.array([i["mean"] for i in ivs])
    yerr = np.nan_to_num(np.array([mean - [i["ci_low"] for i in ivs], [i["ci_high"] for i in ivs] - mean]))
    ax.errorbar(x, mean, yerr=yerr, fmt="o", ms=4, capsize=3, color=f"C{k}", label=label)
    grid = np.geomspace(x.min(), x.max(), 200)
    ax.plot(grid, fit["a"] * grid ** -fit["alpha"] + fit["c"], color=f"C{k}", lw=1.2, ls="--",
            label=f"{fit['a']:.3g}·N^-{fit['alpha']:.3f} + {0 if fit['c_bound'] == '0' else fit['c']:.3g}")
  return _save_log_log(fig, ax, xlabel, ylabel, title, path)


def categories(panels: list[tuple], title: str, path: str) -> str:
  """Side-by-side panels, a row per system: its mean with a 95% interval. panels = [(xlabel, rows
  [(label, mean, low, high)], zero)]; zero: a dotted line at 0 (for paired differences)."""
  fig = _figure(width=4.0 * len(panels), height=1.4 + 0.4 * max(len(rows) for _, rows, _ in panels))
  for k, (xlabel, rows, zero) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), k + 1)
    y = np.arange(len(rows))[::-1]
    mean, low, high = (np.array([r[i] for r in rows], float) for i in (1, 2, 3))
    ax.errorbar(mean, y, xerr=np.nan_to_num(np.array([mean - low, high - mean])), fmt="o", ms=4, capsize=3)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    if zero:
      ax.axvline(0, ls=":", color="gray", lw=1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(alpha=0.3, axis="x")
  fig.suptitle(title + " (mean and 95% CI over seeds)", fontsize=9)
  return _save(fig, path)


def filename(root: str, *parts: str) -> str:
  """root/<parts joined by _>.png, with anything but letters, digits and . + - replaced."""
  return os.path.join(root, "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "_", p) for p in parts) + ".png")


def figures(root: str, title: str, curve_sets: dict, summary, axes: list[str], metrics: list[str],
            fits: list[dict]) -> list[str]:
  """Every figure of a report, written into root; returns their paths.

  curve_sets: {metric: [(configuration label, steps, mean, low, high, FLOPs per step or NaN)]};
  summary: table.summary's rows; fits: scaling.power_laws' fits.
  """
  paths = []
  for metric, series in curve_sets.items():
    bands = f"{title} (mean and 95% CI over seeds)"
    paths.append(curves([s[:5] for s in series], "step", f"validation {metric}", f"validation {metric}: {bands}",
                        filename(root, "curves", metric)))
    by_flops = [(name, steps * flops, mean, low, high) for name, steps, mean, low, high, flops in series
                if np.isfinite(flops)]
    if by_flops:
      paths.append(curves(by_flops, "training FLOPs", f"validation {metric}", f"validation {metric} over FLOPs: "
                          f"{bands}", filename(root, "curves", metric, "flops"), log=True))
  if metrics:
    for axis in axes:
      paths.append(final_vs_axis(summary, axis, [a for a in axes if a != axis], metrics,
                                 f"{title}: final metrics against {axis} (mean and 95% CI over seeds)",
                                 filename(root, "final", axis)))
  for fit in fits:
    points = [stats.interval(values) for _, values in fit["groups"]]
    mean, low, high = ([p[k] for p in points] for k in ("mean", "ci_low", "ci_high"))
    paths.append(power_law([x for x, _ in fit["groups"]], mean, low, high, fit, fit["x_name"], fit["metric"],
                           f"{title}: {fit['metric']} against {fit['x_name']}",
                           filename(root, "power_law", fit["metric"], fit["x_name"])))
  return paths
