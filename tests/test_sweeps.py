"""Sweeps: grid declarations, point identity and state on disk, claims, worker slots, and the engine on
the n-gram experiment (seconds per point) with the in-process debug executor."""

import json
import os
import threading

import pytest

from launching import experiment_config
from lmlab.errors import ConfigError, RunStopped
from lmlab.sweeps import engine, grid, points, stages, worker
from lmlab.train import workdir


def test_grid_helpers_build_products_zips_chains_and_seeds():
  lrs = grid.sweep("optim.lr", [1e-3, 3e-3])
  assert grid.product(lrs, grid.seeds(2)) == [
      {"optim.lr": 1e-3, "seed": 0}, {"optim.lr": 1e-3, "seed": 1},
      {"optim.lr": 3e-3, "seed": 0}, {"optim.lr": 3e-3, "seed": 1}]
  sizes = grid.zip(grid.sweep("model.d_model", [64, 128]), grid.sweep("model.num_heads", [2, 4]))
  assert sizes == [{"model.d_model": 64, "model.num_heads": 2}, {"model.d_model": 128, "model.num_heads": 4}]
  assert grid.chain(lrs, grid.fixed(**{"optim.lr": 1e-2})) == lrs + [{"optim.lr": 1e-2}]
  with pytest.raises(ValueError, match="one length"):
    grid.zip(lrs, grid.seeds(3))
  with pytest.raises(ValueError, match="sets \\['optim.lr'\\] twice"):
    grid.product(lrs, lrs)


def test_points_are_named_by_their_overrides_and_hashed_by_what_changes_results(tmp_path):
  base = experiment_config("gpt.py:size=tiny")
  expanded = points.expand(base, [{"optim.lr": 1e-3, "model.positions": "rotary"}, {"optim.lr": 3e-3},
                                  {"optim.lr": 1e-3, "model.positions": "rotary"}], str(tmp_path))
  assert len(expanded) == 2  # the repeated override dict is the same point
  a, b = expanded
  assert a.name == f"lr=0.001,positions=rotary-{a.key}" and a.workdir == str(tmp_path / a.name)
  assert a.config.optim.lr == 1e-3 and a.config.workdir == a.workdir and a.key != b.key
  # Cadence and names do not change results; the learning rate does.
  changed = experiment_config("gpt.py:size=tiny", **{"optim.lr": 1e-3, "model.positions": "rotary",
                                                      "train.log_every": 7, "name": "other"})
  assert points.results_hash(changed) == a.key
  assert points.readable({"a.lr": 1, "b.lr": 2, "data.text_glob": "x/*.txt"}) == "a.lr=1,b.lr=2,text_glob=x_.txt"
  assert points.readable({"init_from": "/runs/s/experiment=gpt.py_size=mini-1234abcd/"}) == (
      "init_from=experiment=gpt.py_size=mini-1234abcd")  # a pretraining run: its directory's name
  with pytest.raises(ConfigError, match="get_sweep\\(\\) item 0 .*optim.lrr"):
    points.expand(base, [{"optim.lrr": 1.0}], str(tmp_path))


def test_a_points_state_is_read_from_its_directory(tmp_path):
  point = str(tmp_path / "p")
  assert points.state(point) == "pending"
  os.makedirs(point)
  (tmp_path / "p" / "config.json").write_text("{}")
  assert points.state(point) == "preempted"  # started, killed without an outcome
  points.write_outcome(point, {"state": "diverged", "error": "nan"})
  assert points.state(point) == "diverged"
  with workdir.lock(point):
    assert points.state(point) == "running" and points.lock_holder(point).startswith(f"pid {os.getpid()} ")
  assert points.state(point) == "diverged" and points.lock_holder(point) is None  # released
  (tmp_path / "p" / "metrics.json").write_text("{}")
  assert points.state(point) == "done"


def test_a_point_is_claimed_by_one_launcher_at_a_time(tmp_path):
  fd = points.claim(str(tmp_path / "p"))
  assert fd is not None and points.claim(str(tmp_path / "p")) is None
  os.close(fd)
  second = points.claim(str(tmp_path / "p"))
  assert second is not None
  os.close(second)


def test_local_slots_split_the_cores_and_gpus():
  assert [s.cpus for s in worker.local_slots(2, [0, 1], [])] == [(0,), (1,)]
  assert [s.cpus for s in worker.local_slots(2, [0, 1, 2, 3, 4], [])] == [(0, 1), (2, 3)]
  assert [s.cpus for s in worker.local_slots(3, [0, 1], [])] == [(0,), (1,), (0,)]  # more slots than cores
  assert [s.gpus for s in worker.local_slots(2, [0, 1], [0, 1, 2, 3])] == [(0, 1), (2, 3)]
  assert [s.cpus for s in worker.local_slots(2, [0, 1], [], bind=False)] == [None, None]


def _ngram_points(tmp_path, bbc_data_dir, orders, seeds=(0,)):
  base = experiment_config("ngram.py:size=tiny", **{"data.tfds_data_dir": bbc_data_dir})
  return points.expand(base, grid.product(grid.sweep("model.ngram_order", orders), grid.sweep("seed", seeds)),
                       str(tmp_path / "sweep"))


def _starts(point) -> int:
  with open(os.path.join(point.workdir, "provenance.json")) as f:
    return len(json.load(f)["runs"])


def test_a_sweep_reruns_only_what_is_not_finished(tmp_path, bbc_data_dir, monkeypatch):
  monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))  # empty: this sweep prepares its data
  sweep_dir = str(tmp_path / "sweep")
  lines = []
  first = _ngram_points(tmp_path, bbc_data_dir, (2, 3))
  assert engine.run(first, sweep_dir, "debug", out=lines.append) == {"done": 2}
  # Prepared once for both points, before they run: the tokenizer, then the shards of both splits.
  assert sum(line.startswith("Training the tokenizer") for line in lines) == 1
  assert sum(line.startswith("Preparing") for line in lines) == 2
  for p in first:
    record = json.load(open(os.path.join(p.workdir, "provenance.json")))["runs"][0]
    assert record["outcome"] == "finished" and record["versions"]["jax"] and record["devices"]["count"] >= 1
    assert record["git"]["commit"] is None or len(record["git"]["commit"]) == 40
    events = os.listdir(os.path.join(p.workdir, "tensorboard"))
    assert events and _has_hparams(os.path.join(p.workdir, "tensorboard"))
  # The same sweep again: nothing runs. With a second seed: only the two new points run.
  assert engine.run(first, sweep_dir, "debug", out=lines.append) == {"done": 2}
  grown = _ngram_points(tmp_path, bbc_data_dir, (2, 3), seeds=(0, 1))
  lines.clear()
  assert engine.run(grown, sweep_dir, "debug", out=lines.append) == {"done": 4}
  assert [_starts(p) for p in grown] == [1, 1, 1, 1]
  assert sum(line.endswith(": done") for line in lines) == 2
  # A failed point is left alone unless retried; a point another launcher holds is waited for.
  os.remove(os.path.join(grown[0].workdir, "metrics.json"))
  points.write_outcome(grown[0].workdir, {"state": "failed", "error": "boom"})
  assert engine.run(grown, sweep_dir, "debug", out=lines.append) == {"done": 3, "failed": 1}
  assert engine.run(grown, sweep_dir, "debug", retry_failed=True, out=lines.append) == {"done": 4}
  assert _starts(grown[0]) == 2
  # A point that another launch has claimed is waited for, then run here if that launch left it.
  os.remove(os.path.join(grown[1].workdir, "metrics.json"))
  held = points.claim(grown[1].workdir)
  threading.Timer(2.0, os.close, [held]).start()
  lines.clear()
  assert engine.run(grown, sweep_dir, "debug", poll_s=0.2, out=lines.append) == {"done": 4}
  assert any("running in another launch" in line for line in lines) and _starts(grown[1]) == 2
  engine.record_points(sweep_dir, grown, ["launch.py", "sweep"])
  table = engine.status(sweep_dir)
  assert table.count("| done |") == 4 and "4/4 done" in table


def _has_hparams(tb_dir: str) -> bool:
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(tb_dir)
  events.Reload()
  return bool(events.PluginTagToContent("hparams")) and "final/validation.loss" in events.Tags()["scalars"]


def test_only_an_srun_step_with_several_tasks_is_a_multi_process_run(monkeypatch):
  from lmlab import distributed
  for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.slurm_tasks() == 1  # no Slurm
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.slurm_tasks() == 1  # a shell on an allocated node: no step (jax issue #30073)
  monkeypatch.setenv("SLURM_STEP_NODELIST", "vm")
  assert distributed.slurm_tasks() == 4
  monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
  assert distributed.slurm_tasks() == 1  # a one-task step of a bigger job (submitit's array tasks)
  distributed.initialize()  # one task: nothing to join (and no error)
  assert not distributed.initialized


def test_a_search_runs_its_trials_in_one_study_and_a_rerun_adds_none(tmp_path, bbc_data_dir):
  from lmlab.sweeps import search
  base = experiment_config("ngram.py:size=tiny", **{"data.tfds_data_dir": bbc_data_dir})
  space = search.check_space({"params": {"model.ngram_order": ("int", 2, 5)}, "trials": 3})
  sweep_dir = str(tmp_path / "search")
  line = engine.search(base, space, sweep_dir, "debug", out=lambda _: None)
  study = search.study(sweep_dir, space)
  assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
  assert os.path.exists(os.path.join(sweep_dir, "optuna.journal"))
  best = study.best_trial
  with open(os.path.join(best.user_attrs["workdir"], "metrics.json")) as f:
    assert json.load(f)["validation"]["loss"] == best.value == min(t.value for t in study.trials)
  assert f"best validation.loss {best.value:.4f} (trial {best.number}" in line
  assert os.path.basename(best.user_attrs["workdir"]).startswith(f"ngram_order={best.params['model.ngram_order']}-")
  engine.search(base, space, sweep_dir, "debug", out=lambda _: None)
  assert len(search.study(sweep_dir, space).trials) == 3
  with pytest.raises(ConfigError, match="low < high"):
    search.check_space({"params": {"optim.lr": ("log_float", 1e-2, 1e-3)}})


def test_a_pruned_trial_stops_at_its_evaluation_and_frees_its_directory(tmp_path, bbc_data_dir):
  """The search's pruner raises from the loop's on_eval hook: the run stops right after that evaluation,
  saves nothing more, and releases its work directory."""
  from lmlab import run

  class Pruned(Exception):
    pass

  def prune(step, result):
    assert result["loss"] > 0
    raise Pruned(step)

  cfg = experiment_config("gpt.py:size=tiny", **{"data.tfds_data_dir": bbc_data_dir, "train.eval_every": 5})
  cfg.workdir = str(tmp_path / "trial")
  with pytest.raises(Pruned, match="5"):
    run.run(cfg, on_eval=prune)
  assert not os.path.exists(os.path.join(cfg.workdir, "metrics.json")) and points.lock_holder(cfg.workdir) is None
  with open(os.path.join(cfg.workdir, "provenance.json")) as f:
    assert json.load(f)["runs"][0]["outcome"].startswith("error: Pruned")


def test_a_point_finished_by_another_launch_after_the_first_look_is_not_run_again(tmp_path, bbc_data_dir,
                                                                                  monkeypatch):
  """The race a concurrent launch hits: the point was pending when this launch looked, and finished (its
  claim released) before this launch claimed it."""
  (point,) = _ngram_points(tmp_path, bbc_data_dir, (2,))
  lines = []
  real_claim = engine._try_claim

  def finish_then_claim(p):  # the other launch finishes the point just before our claim
    os.makedirs(p.workdir, exist_ok=True)
    with open(os.path.join(p.workdir, "metrics.json"), "w") as f:
      f.write("{}")
    return real_claim(p)

  monkeypatch.setattr(engine, "_try_claim", finish_then_claim)
  assert engine.run([point], str(tmp_path / "sweep"), "debug", out=lines.append) == {"done": 1}
  assert not os.path.exists(os.path.join(point.workdir, "provenance.json"))  # never started here
  assert any(line.endswith(": done in another launch of this sweep") for line in lines)


def test_the_tasks_of_a_local_multi_task_job_join_over_127_0_0_1(monkeypatch):
  """`--executor local --tasks_per_node 2`: submitit starts two processes per point; they join one run
  with explicit arguments (the port from the job id, the same for both tasks)."""
  import jax

  from lmlab import distributed
  for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "31234")
  monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
  monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
  assert distributed.local_tasks() == ("127.0.0.1:31234", 2, 1)
  calls = []
  monkeypatch.setattr(jax.config, "update", lambda *args: calls.append(("update", *args)))
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(("initialize", *args)))
  monkeypatch.setattr(distributed, "initialized", False)
  distributed.initialize()
  assert calls == [("update", "jax_cpu_collectives_implementation", "gloo"),
                   ("initialize", "127.0.0.1:31234", 2, 1)]
  monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "1")
  assert distributed.local_tasks() is None  # one task per point: one process


def test_best_chooses_per_group_on_the_validation_metric():
  """The per-system selection of a staged ablation: the best validation accuracy within each (system,
  fraction); a tie keeps the first run in order."""
  def result(system, lr, acc, fraction=0.1):
    return stages.Result("select", {"optim.lr": lr}, f"/s/{system}-{lr}",
                         {"name": system, "label_fraction": fraction, "validation": {"accuracy": acc}})
  runs = [result("gpt", 1e-4, 0.50), result("gpt", 3e-4, 0.71), result("gpt", 1e-3, 0.64),
          result("bert", 1e-4, 0.40), result("bert", 1e-3, 0.40), result("gpt", 1e-4, 0.30, fraction=0.01)]
  chosen = stages.best(runs, group=lambda r: (r.summary["name"], r.summary["label_fraction"]),
                       metric=lambda r: r.summary["validation"]["accuracy"])
  assert {k: r.overrides["optim.lr"] for k, r in chosen.items()} == {
      ("gpt", 0.1): 3e-4, ("bert", 0.1): 1e-4, ("gpt", 0.01): 1e-4}
  lowest = stages.best(runs, group=lambda r: r.summary["name"], metric=lambda r: r.summary["validation"]["accuracy"],
                       mode="min")
  assert lowest["gpt"].summary["validation"]["accuracy"] == 0.30


def test_stages_run_in_order_on_the_results_of_the_earlier_ones(tmp_path, bbc_data_dir, monkeypatch):
  """A later stage is a function of the earlier stages' finished points, and a point may start from
  another experiment file; a stage that does not finish stops the sweep before the next one."""
  experiments = tmp_path / "experiments"
  experiments.mkdir()
  (experiments / "ng.py").write_text(
      "from launching import experiment_config\n"
      "def get_config(arg=None):\n"
      f"  c = experiment_config('ngram.py:size=tiny', **{{'data.tfds_data_dir': {bbc_data_dir!r}}})\n"
      "  c.model.ngram_order = int(arg or 2)\n"
      "  return c\n")
  seen = []

  def second(done):
    seen.extend((r.stage, r.overrides["experiment"], r.summary["validation"]["loss"]) for r in done)
    best = stages.best(done, group=lambda r: 0, metric=lambda r: r.summary["validation"]["loss"], mode="min")[0]
    return [{"experiment": best.overrides["experiment"], "seed": 1}]

  sweep = [stages.Stage("orders", [{"experiment": "ng.py:2"}, {"experiment": "ng.py:3"}]),
           stages.Stage("seeds", second)]
  sweep_dir = str(tmp_path / "sweep")
  grid, counts = stages.run(experiment_config("ngram.py:size=tiny"), sweep, sweep_dir, str(experiments), ["x"],
                            executor="debug", out=lambda line: None)
  assert counts == {"done": 3} and [s for s, _, _ in seen] == ["orders", "orders"]
  losses = {e: loss for _, e, loss in seen}
  assert grid[-1].overrides == {"experiment": min(losses, key=losses.get), "seed": 1}
  assert grid[0].config.model.ngram_order == 2 and grid[1].config.model.ngram_order == 3
  assert grid[0].name.startswith("experiment=ng.py_2-")
  # A failed point in the first stage: the second does not start.
  os.remove(os.path.join(grid[0].workdir, "metrics.json"))
  points.write_outcome(grid[0].workdir, {"state": "failed", "error": "boom"})
  seen.clear()
  with pytest.raises(RunStopped, match="stage 'orders' has 1 failed"):
    stages.run(experiment_config("ngram.py:size=tiny"), sweep, sweep_dir, str(experiments), ["x"],
               executor="debug", out=lambda line: None)
  assert not seen
