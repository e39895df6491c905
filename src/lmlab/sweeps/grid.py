"""Declaring a sweep: `get_sweep()` in an experiment file returns a list of override dicts (dotted config
keys -> values), built from these helpers so that grids read like big_vision's `get_hyper`:

  def get_sweep():
    return grid.product(grid.sweep("model.positions", ["learned", "rotary"]),
                        grid.sweep("optim.lr", [1e-3, 3e-3]),
                        grid.seeds(3))

  product(a, b)  every combination: len(a) * len(b) points, the last list varying fastest
  zip(a, b)      pairwise: a[i] with b[i] (equal lengths)
  chain(a, b)    a's points, then b's
  fixed(k=v)     one point: the same overrides for all (combine with product)
"""

import builtins
import itertools

Points = list[dict]


def sweep(key: str, values) -> Points:
  """One axis: [{key: v} for v in values]."""
  return [{key: value} for value in values]


def seeds(n: int, start: int = 0) -> Points:
  """n seeds: the repetitions a report groups over."""
  return sweep("seed", range(start, start + n))


def fixed(**overrides) -> Points:
  """One point with the given overrides; dotted keys as `fixed(**{"optim.lr": 1e-3})`."""
  return [dict(overrides)]


def product(*axes: Points) -> Points:
  """Every combination of one point of each list (later lists vary fastest)."""
  points = []
  for combination in itertools.product(*axes):
    points.append(_merge(combination))
  return points


def zip(*axes: Points) -> Points:  # noqa: A001  (grid.zip reads as the sweep it declares)
  """Point i of each list, merged: the lists must have the same length."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise ValueError(f"grid.zip needs lists of one length, got lengths {sorted(lengths)}")
  return [_merge(points) for points in builtins.zip(*axes)]


def chain(*lists: Points) -> Points:
  """The points of each list in turn."""
  return [dict(point) for points in lists for point in points]


def _merge(points) -> dict:
  merged = {}
  for point in points:
    clash = set(merged) & set(point)
    if clash:
      raise ValueError(f"a sweep point sets {sorted(clash)} twice; combine axes over different keys")
    merged.update(point)
  return merged
