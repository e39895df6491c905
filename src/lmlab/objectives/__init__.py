"""The pretraining objectives, declared once each and picked by config.objective.name.

Each module holds its objectives' batch transforms and their `Objective` records (objectives/base.py):
the families they train, their rows, transform and spec, loss terms, derived model options and decoding.
Adding an objective is one record plus its transform in one of these modules (or a new one listed here).
"""

from lmlab.errors import ConfigError
from lmlab.objectives import causal, masked, span
from lmlab.objectives.base import LossTerm, Objective, ObjectiveData  # noqa: F401  (the public names)

REGISTRY = {o.name: o for o in (*causal.OBJECTIVES, *masked.OBJECTIVES, *span.OBJECTIVES)}


def get(name: str) -> Objective:
  if name not in REGISTRY:
    raise ConfigError(f"config.objective.name = {name!r} is not one of {', '.join(REGISTRY)}.")
  return REGISTRY[name]


def by_family() -> dict[str, tuple[str, ...]]:
  """{model family: the objectives that train it}, in registry order."""
  out = {}
  for objective in REGISTRY.values():
    for family in objective.families:
      out[family] = out.get(family, ()) + (objective.name,)
  return out
