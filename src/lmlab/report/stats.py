"""The report's statistics: mean, sd and 95% Student-t interval over seeds (also of paired differences
between two systems), per-step bands of curves, and power laws L = a·x^-alpha + c with a bootstrap interval for alpha."""

import warnings

import numpy as np
from scipy import optimize
from scipy import stats as sps

LEVEL = 0.95
MAX_ALPHA = 5.0  # steeper than x^-5 is no scaling law; the bound keeps the optimizer out of nonsense


class FitError(Exception):
  """A power law that could not be fitted (no convergence, or data it cannot describe)."""


def interval_columns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean, sd, half-width of the 95% t interval) of each column of `values` (a row per seed); sd and
  half-width are NaN with one seed."""
  values = np.asarray(values, float)
  n = values.shape[0]
  mean = values.mean(axis=0) if n else np.full(values.shape[1:], np.nan)
  if n < 2:
    nan = np.full_like(mean, np.nan)
    return mean, nan, nan
  sd = values.std(axis=0, ddof=1)
  return mean, sd, sps.t.ppf(0.5 + LEVEL / 2, n - 1) * sd / np.sqrt(n)


def interval(values) -> dict:
  """{n, mean, sd, ci_low, ci_high} of the values (missing ones, NaN, dropped)."""
  v = np.asarray(values, float)
  v = v[~np.isnan(v)]
  mean, sd, half = (float(a[0]) for a in interval_columns(v[:, None]))
  return {"n": len(v), "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def paired_difference(a: dict, b: dict) -> dict:
  """interval() of a[seed] - b[seed] over the seeds both have ({seed: value} each): two systems compared
  on the same label subset and data order per seed, so seed-to-seed variation they share cancels. One
  system beats the other when the interval excludes 0."""
  seeds = sorted(set(a) & set(b))
  return dict(interval([a[s] - b[s] for s in seeds]), seeds=seeds)


def band(curves: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(steps, mean, low, high) of the seeds' curves ({step: value} each) at the steps all of them logged."""
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  values = np.array([[c[s] for s in steps] for c in curves], float).reshape(len(curves), len(steps))
  mean, _, half = interval_columns(values)
  return np.array(steps, float), mean, mean - half, mean + half


def lowest_per_x(x, y) -> tuple[np.ndarray, np.ndarray]:
  """The lowest y at each distinct x, by increasing x: where several configurations share an x (other
  axes swept too, e.g. learning rates per model size), the law is fitted to the best one, as scaling-law
  studies take the best learning rate per size."""
  best = {}
  for xi, yi in zip(x, y):
    best[xi] = min(best.get(xi, np.inf), yi)
  xs = np.array(sorted(best), float)
  return xs, np.array([best[xi] for xi in xs], float)


def _law(x, a, alpha, c):
  return a * x ** (-alpha) + c


def fit_power_law(x, y, guess: tuple | None = None) -> tuple[float, float, float]:
  """(a, alpha, c) of y = a·x^-alpha + c by least squares with a >= 0, 0 <= alpha <= 5 and
  0 <= c <= min(y) (the law stays above c); starts from `guess` (a, alpha, c) if given, else from a few
  exponents, keeping the best. Raises FitError."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  if len(x) < 3 or np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
    raise FitError("a power law needs 3 or more positive points")
  scale = x.min()  # fit in units of the smallest x, so that a stays of the order of y for any x
  u = x / scale
  upper = (np.inf, MAX_ALPHA, y.min())
  if guess is not None:
    a, alpha, c = guess
    starts = [(a / scale ** alpha, alpha, c)]
  else:
    starts = [(y.max() - y.min() / 2, alpha, y.min() / 2) for alpha in (0.1, 0.5, 1.5)]
  best = None
  for a, alpha, c in starts:
    # A starting point on or outside the bounds is refused by curve_fit: move it just inside.
    p0 = (max(a, 1e-9), float(np.clip(alpha, 1e-3, MAX_ALPHA - 1e-3)), float(np.clip(c, 0, upper[2] * 0.999)))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optimize.OptimizeWarning)  # 3 parameters on 4 points: no covariance
      try:
        p, _ = optimize.curve_fit(_law, u, y, p0=p0, bounds=((0, 0, 0), upper), maxfev=10000)
      except (RuntimeError, ValueError):
        continue
    sse = float(np.sum((_law(u, *p) - y) ** 2))
    if best is None or sse < best[0]:
      best = (sse, p)
  if best is None:
    raise FitError("the power-law fit did not converge")
  a, alpha, c = best[1]
  return float(a * scale ** alpha), float(alpha), float(c)


def power_law(groups: list[tuple[float, np.ndarray]], resamples: int = 200, seed: int = 0) -> dict:
  """Fits L = a·x^-alpha + c to the configurations' mean values, `groups` = [(x, values over seeds)], and
  bootstraps alpha over seeds: each resample draws every configuration's seeds with replacement and
  refits (failed fits are skipped). Returns {a, alpha, c, c_bound, alpha_ci, resamples (successful),
  attempted, x, y}; c_bound is "0" or "min(L)" when c sits on that bound of fit_power_law (the points do
  not identify an irreducible loss), else None; alpha_ci is (NaN, NaN) when no configuration has two
  seeds. Raises FitError."""
  xs = [x for x, _ in groups]
  x, y = lowest_per_x(xs, [np.mean(v) for _, v in groups])
  if len(x) < 4:
    raise FitError("fewer than 4 distinct x values")
  if np.ptp(y) == 0 or not sps.spearmanr(x, y)[0] < 0:
    raise FitError("the metric does not fall as x grows")
  a, alpha, c = fit_power_law(x, y)
  alphas, attempted = [], resamples if any(len(v) > 1 for _, v in groups) else 0
  if attempted:
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
      means = [rng.choice(v, size=len(v)).mean() for _, v in groups]
      try:
        alphas.append(fit_power_law(*lowest_per_x(xs, means), guess=(a, alpha, c))[1])
      except FitError:
        continue
  ci = tuple(float(q) for q in np.percentile(alphas, [2.5, 97.5])) if alphas else (np.nan, np.nan)
  c_bound = "0" if c < 1e-3 else "min(L)" if c > y.min() - 1e-3 else None
  return {"a": a, "alpha": alpha, "c": c, "c_bound": c_bound, "alpha_ci": ci, "resamples": len(alphas),
          "attempted": attempted, "x": x, "y": y}
