"""Sweeps in stages: each stage's points start when every point of the stages before it is done, and a
stage may be a function of their results. An ablation that pretrains, then chooses settings on
validation, then runs seeds with them is one `get_sweep()` and one command:

  def get_sweep():
    return [stages.Stage("pretrain", [{"experiment": "gpt.py:size=small"}, ...]),
            stages.Stage("select", lambda done: [...]),   # e.g. init_from = done[0].workdir
            stages.Stage("seeds", lambda done: [...])]    # e.g. stages.best(done, ...) per system

A point's "experiment" override names another experiment file beside this one as its base config (the
pretraining runs of a fine-tuning ablation). Every stage's points live in the one sweep directory, so a
re-run skips what is done, and `--status` and the report see them all.
"""

import dataclasses
import importlib.util
import json
import os
from typing import Callable

from lmlab.errors import ConfigError, RunStopped
from lmlab.sweeps import engine, points as points_lib


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  # Override dicts, or a function of the results of the earlier stages returning them.
  points: list[dict] | Callable[[list["Result"]], list[dict]]


@dataclasses.dataclass(frozen=True)
class Result:
  """A finished point of an earlier stage."""
  stage: str
  overrides: dict
  workdir: str
  summary: dict  # its metrics.json


def is_staged(sweep) -> bool:
  return bool(sweep) and all(isinstance(s, Stage) for s in sweep)


def experiment_module(experiments_dir: str, path: str):
  """The experiment file experiments_dir/path ("label_efficiency.py") as a module: an ablation reusing
  another's protocol."""
  full = os.path.join(experiments_dir, path)
  if not os.path.exists(full):
    raise ConfigError(f"experiment {path!r}: no file {full}")
  module_spec = importlib.util.spec_from_file_location(f"experiment_{os.path.splitext(path)[0]}", full)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def at_size(experiment: str, size: str) -> str:
  """"lstm.py:cell=gru", "mini" -> "lstm.py:size=mini,cell=gru": an experiment spec at a size preset."""
  path, _, arg = experiment.partition(":")
  return f"{path}:size={size}" + (f",{arg}" if arg else "")


def steps_for_flops(cfg, budget: float) -> int:
  """Updates of cfg that spend `budget` training FLOPs (at least 1), by lmlab's own count: ablations at
  matched compute."""
  from lmlab import models  # JAX: only for experiments that need it
  per_step = models.config_flops_per_token(cfg, cfg.tokenizer.vocab_size) * cfg.data.batch_size * cfg.data.seq_len
  return max(1, round(budget / per_step))


def experiment_loader(experiments_dir: str):
  """spec "gpt.py:size=small" -> that experiment file's get_config("size=small"), the file found in
  experiments_dir."""
  def load(spec: str):
    path, _, arg = spec.partition(":")
    try:
      module = experiment_module(experiments_dir, path)
    except ConfigError:
      raise ConfigError(f"experiment {spec!r}: no file {os.path.join(experiments_dir, path)}") from None
    return module.get_config(arg or None)
  return load


def best(results: list[Result], group: Callable[[Result], object], metric: Callable[[Result], float],
         mode: str = "max") -> dict:
  """{group key: the Result with the best metric in that group} (ties: the first in `results` order),
  e.g. the learning rate and pooling each system reaches its best validation accuracy with."""
  chosen = {}
  for r in results:
    key, value = group(r), metric(r)
    if key not in chosen or (value > metric(chosen[key]) if mode == "max" else value < metric(chosen[key])):
      chosen[key] = r
  return chosen


def finished(sweep_dir: str):
  """(work directory, its metrics.json, its config.json) for every finished run in sweep_dir, in name order:
  what an experiment's report() reads."""
  for name in sorted(os.listdir(sweep_dir)):
    path = os.path.join(sweep_dir, name)
    if os.path.exists(os.path.join(path, "metrics.json")):
      with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
      yield path, _summary(path), cfg


def _summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


def run(base, sweep: list[Stage], sweep_dir: str, experiments_dir: str, command: list[str], out=print,
        **engine_options) -> tuple[list[points_lib.Point], dict]:
  """Runs the stages in order (engine.run per stage); returns (every point, {state: count}). Stops with
  RunStopped naming the stage when one of its points did not finish (the next stage needs them all)."""
  load = experiment_loader(experiments_dir)
  results, everything = [], []
  counts = {}
  for number, stage in enumerate(sweep, 1):
    overrides = stage.points(list(results)) if callable(stage.points) else stage.points
    grid = points_lib.expand(base, list(overrides), sweep_dir, load)
    engine.record_points(sweep_dir, grid, command)
    out(f"stage {number}/{len(sweep)} '{stage.name}': {len(grid)} points")
    counts = engine.run(grid, sweep_dir, **engine_options, out=out)
    everything += grid
    unfinished = {k: v for k, v in counts.items() if k != "done"}
    if unfinished:
      raise RunStopped(f"sweep {sweep_dir}: stage '{stage.name}' has " + ", ".join(
          f"{v} {k}" for k, v in unfinished.items()) + " point(s); the later stages need all of them done "
          f"(python launch.py sweep --status {sweep_dir}; --retry_failed reruns failed ones).")
    results += [Result(stage.name, p.overrides, p.workdir, _summary(p.workdir)) for p in grid]
  return everything, engine.counts(everything)
