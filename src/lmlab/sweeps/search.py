"""Hyperparameter search with Optuna: an experiment file's `get_search_space()` declares the distributions,
the number of trials, the metric and its direction:

  def get_search_space():
    return {"params": {"optim.lr": ("log_float", 1e-4, 1e-2), "model.dropout_rate": ("float", 0.0, 0.3),
                       "model.num_layers": ("int", 2, 6), "model.positions": ("categorical", ["learned", "rotary"])},
            "trials": 20, "metric": "validation.loss", "direction": "minimize"}

`launch.py sweep --search` starts K workers (the sweep's executor: debug, local or slurm) that share one
study in a JournalFileBackend file, <sweep>/optuna.journal (SQLite breaks on NFS and under parallel
writers). Each trial is a point of the sweep directory like a grid's (same naming, provenance, report),
pruned by the median rule on its periodic validation metric. Grids never go through Optuna (its
GridSampler repeats points across workers).
"""

import json
import os

from lmlab.errors import ConfigError

KINDS = ("float", "log_float", "int", "categorical")
JOURNAL = "optuna.journal"


def check_space(space: dict) -> dict:
  """The search space with its defaults, or a ConfigError naming what is wrong."""
  if not isinstance(space, dict) or not isinstance(space.get("params"), dict) or not space["params"]:
    raise ConfigError("get_search_space() must return {'params': {key: (kind, ...)}, 'trials': N, 'metric': "
                      "'validation.loss', 'direction': 'minimize'}.")
  for key, spec in space["params"].items():
    if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in KINDS:
      raise ConfigError(f"get_search_space() params[{key!r}] = {spec!r}: use (kind, ...) with kind in {KINDS}.")
    if spec[0] == "categorical" and (len(spec) != 2 or not spec[1]):
      raise ConfigError(f"get_search_space() params[{key!r}]: ('categorical', [choices]).")
    if spec[0] != "categorical" and (len(spec) != 3 or not spec[1] < spec[2]):
      raise ConfigError(f"get_search_space() params[{key!r}]: ({spec[0]!r}, low, high) with low < high.")
  direction = space.get("direction", "minimize")
  if direction not in ("minimize", "maximize"):
    raise ConfigError(f"get_search_space() direction = {direction!r}: 'minimize' or 'maximize'.")
  metric = space.get("metric", "validation.loss")
  if not metric.startswith("validation."):
    raise ConfigError(f"get_search_space() metric = {metric!r}: a validation metric (validation.<name>), so "
                      "that the test split stays unseen.")
  return dict(space, trials=int(space.get("trials", 10)), metric=metric, direction=direction)


def _suggest(trial, key: str, spec) -> object:
  kind = spec[0]
  if kind == "categorical":
    return trial.suggest_categorical(key, list(spec[1]))
  if kind == "int":
    return trial.suggest_int(key, int(spec[1]), int(spec[2]))
  return trial.suggest_float(key, float(spec[1]), float(spec[2]), log=kind == "log_float")


def study(sweep_dir: str, space: dict, seed: int = 0):
  """The sweep's study (created by the first worker, loaded by the others)."""
  import optuna
  from optuna.storages import JournalStorage
  from optuna.storages.journal import JournalFileBackend
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  os.makedirs(sweep_dir, exist_ok=True)
  storage = JournalStorage(JournalFileBackend(os.path.join(sweep_dir, JOURNAL)))
  return optuna.create_study(
      study_name="lmlab", storage=storage, direction=space["direction"], load_if_exists=True,
      sampler=optuna.samplers.TPESampler(seed=seed), pruner=optuna.pruners.MedianPruner(n_startup_trials=2))


class SearchWorker:
  """One search worker (a submitit job): runs trials of the shared study until it has `trials` finished
  (complete or pruned) trials in all."""

  def __call__(self, base: dict, space: dict, sweep_dir: str, cwd: str | None = None, index: int = 0,
               slot=None) -> int:
    """index: this worker's number, its sampler's seed (workers with one seed would draw the same values);
    slot: its share of a local machine (sweeps.worker.Slot)."""
    from lmlab.sweeps import worker
    worker.take(slot)
    if cwd:
      os.chdir(cwd)
    import ml_collections
    import optuna
    from absl import logging

    from lmlab import distributed, errors, run
    from lmlab.sweeps import points
    distributed.initialize()
    logging.set_verbosity(logging.INFO if os.environ.get("LMLAB_VERBOSE", "") not in ("", "0") else logging.FATAL)
    split, name = space["metric"].split(".", 1)
    base_cfg = ml_collections.ConfigDict(base)

    def objective(trial):
      overrides = {key: _suggest(trial, key, spec) for key, spec in space["params"].items()}
      point = points.expand(base_cfg, [overrides], sweep_dir)[0]
      trial.set_user_attr("workdir", point.workdir)
      trial.set_user_attr("worker", index)

      def report(step, result):
        trial.report(float(result[name]), step)
        if trial.should_prune():
          raise optuna.TrialPruned(f"pruned at step {step}: {name} {result[name]:.4f}")

      # Trials that draw the same values share one point: the first trains it, the others wait for it and
      # read its result (the same config gives the same result).
      claim = points.claim(point.workdir, wait=True)
      try:
        if points.state(point.workdir) == "done":
          with open(os.path.join(point.workdir, "metrics.json")) as f:
            return float(json.load(f)[split][name])
        summary = run.run(point.config, on_eval=report)
      except errors.Diverged as e:  # a result of the hyperparameters: the search goes on without them
        raise optuna.TrialPruned(str(e)) from e
      finally:
        os.close(claim)
      return float(summary[split][name])

    # Failed trials count too: a data error would otherwise fail trial after trial forever.
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    s = study(sweep_dir, space, seed=index)
    if sum(t.state in done for t in s.trials) >= space["trials"]:
      return len(s.trials)  # a re-run of a finished search adds nothing
    s.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(space["trials"], states=done)],
               catch=(errors.UserError,))
    return len(s.trials)


def best(sweep_dir: str, space: dict) -> str:
  """A line on the study: trials by state, and the best trial's value, parameters and work directory."""
  import optuna
  s = study(sweep_dir, space)
  states = {}
  for t in s.trials:
    states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
  counts = ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
  finished = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
  if not finished:
    return f"search: {counts}; no trial completed"
  b = s.best_trial
  return (f"search: {counts}; best {space['metric']} {b.value:.4f} (trial {b.number}: "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.params.items())
          + f") in {b.user_attrs.get('workdir')}")
