"""Power laws across a sweep's configurations: a loss against parameters, training FLOPs or a numeric
swept axis, L = a·x^-alpha + c, with a bootstrap interval for alpha over seeds."""

import numpy as np

from lmlab.report import stats
from lmlab.report import table as table_lib

MIN_POINTS = 4  # three parameters: fewer distinct x would fit any curve exactly
DERIVED = ("parameters", "train_flops")


def is_loss(metric: str) -> bool:
  """A power law falling to a floor describes losses (loss, nsp_loss), not accuracies or ROUGE."""
  return metric.endswith("loss")


def candidates(configs: list[table_lib.Config], axes: list[str]) -> dict[str, np.ndarray]:
  """{x name: x per configuration} for the derived quantities and numeric axes with at least
  MIN_POINTS distinct positive values (NaN where a configuration has none)."""
  numeric = [a for a in axes if all(table_lib.is_number(c.values[a]) for c in configs)]
  found = {}
  for name in list(DERIVED) + numeric:
    x = np.array([c.values[name] if name in c.values else c.runs[name].mean() if name in c.runs else np.nan
                  for c in configs], float)
    if len(set(x[np.isfinite(x) & (x > 0)])) >= MIN_POINTS:
      found[name] = x
  return found


def line(fit: dict) -> str:
  """'power law: validation.loss = 12.3·parameters^-0.076 + 1.71; alpha 95% CI [0.061, 0.090] (200 ...)'."""
  law = f"power law: {fit['metric']} = {fit['a']:.3g}·{fit['x_name']}^-{fit['alpha']:.3f} + {fit['c']:.3g}"
  if fit["resamples"]:
    low, high = fit["alpha_ci"]
    used = fit["resamples"] if fit["resamples"] == fit["attempted"] else f"{fit['resamples']} of {fit['attempted']}"
    return f"{law}; alpha 95% CI [{low:.3f}, {high:.3f}] ({used} bootstrap resamples)"
  if fit["attempted"]:
    return f"{law}; no alpha interval (none of {fit['attempted']} bootstrap refits converged)"
  return f"{law}; no alpha interval (one seed per configuration)"


def power_laws(configs: list[table_lib.Config], axes: list[str], metrics: list[str]) -> tuple[list[dict], list[str]]:
  """(fits, notes): a fit per loss metric and candidate x (stats.power_law's dict plus metric, x_name,
  groups = [(x, values over seeds)] and line), and a note per pair that could not be fitted."""
  fits, notes = [], []
  for name, x in candidates(configs, axes).items():
    for metric in filter(is_loss, metrics):
      groups = [(xi, c.runs[metric].dropna().to_numpy(float)) for xi, c in zip(x, configs)
                if np.isfinite(xi) and xi > 0]
      groups = [(xi, values) for xi, values in groups if len(values)]
      try:
        fit = stats.power_law(groups)
      except stats.FitError as e:
        notes.append(f"power law: {metric} against {name}: not fitted ({e})")
        continue
      fit.update(metric=metric, x_name=name, groups=groups)
      fits.append(dict(fit, line=line(fit)))
  return fits, notes
