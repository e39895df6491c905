"""Sweeps and searches through launch.py in subprocesses (the e2e tier): a local sweep's window and a
concurrent second launch, a stopped sweep resumed, an Optuna search shared by two workers."""

import json
import os

import pytest

from launching import ROOT, gpt_variant, launch, start, train_losses

pytestmark = pytest.mark.e2e


def _intervals(point_dir):
  import datetime
  with open(os.path.join(point_dir, "provenance.json")) as f:
    return [(datetime.datetime.fromisoformat(r["started"]), datetime.datetime.fromisoformat(r["ended"]))
            for r in json.load(f)["runs"]]


def _wait_until(condition, proc, timeout=300):
  import time
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline or proc.poll() is not None:
      raise AssertionError(f"gave up waiting: {proc.poll()} {proc.stderr.read()[-3000:] if proc.poll() else ''}")
    time.sleep(0.2)


def test_sweep_runs_points_in_a_window_and_concurrent_launches_share_them(tmp_path, bbc_data_dir):
  """The README's sweep commands on the n-gram experiment (seconds per point): a local sweep with at most
  2 workers and, started while it runs, a second launch of the same sweep in its own process; each point
  trains exactly once, --status lists them, the report is written, and a rerun skips every point."""
  sweep_dir = str(tmp_path / "sweep")
  args = ["sweep", f"--config={ROOT}/experiments/ngram.py:size=tiny", f"--workdir={sweep_dir}"]
  local = start([*args, "--max_parallel=2"], bbc_data_dir)
  _wait_until(lambda: os.path.exists(os.path.join(sweep_dir, "sweep.jsonl")), local)
  second = launch([*args, "--executor=debug", "--report_plots=false"], bbc_data_dir)
  out, err = local.communicate(timeout=600)
  assert local.returncode == 0, err[-3000:]
  points = sorted(p for p in os.listdir(sweep_dir) if p.startswith("ngram_order="))
  assert [p.split("-")[0] for p in points] == [f"ngram_order={n}" for n in (2, 3, 4, 5)]
  runs = {p: _intervals(os.path.join(sweep_dir, p)) for p in points}
  assert all(len(r) == 1 for r in runs.values()), runs  # no point trained twice
  with open(os.path.join(sweep_dir, "sweep.jsonl")) as f:
    events = [json.loads(line) for line in f]
  local_points = {e["point"] for e in events if e["state"] == "done" and not str(e["job_id"]).startswith("DEBUG")}
  spans = [runs[p][0] for p in local_points]
  assert spans and max(sum(a <= t < b for a, b in spans) for t, _ in spans) <= 2  # the window
  assert second.returncode == 0  # it ran what was left, or waited for the points the other launch held
  losses = [json.load(open(os.path.join(sweep_dir, p, "metrics.json")))["validation"]["loss"] for p in points]
  assert losses[1] < losses[0]  # a trigram beats a bigram on the same targets
  assert os.path.exists(os.path.join(sweep_dir, "report.md")) and "model.ngram_order" in out
  status = launch(["sweep", f"--status={sweep_dir}"], bbc_data_dir).stdout
  assert status.count("| done |") == 4 and "4/4 done" in status
  again = launch([*args, "--max_parallel=2", "--report_plots=false"], bbc_data_dir).stdout
  assert again.count(": done, skipped") == 4 and "started" not in again


def test_a_stopped_sweep_saves_its_workers_and_the_rerun_resumes_them(tmp_path, bbc_data_dir, compilation_cache):
  """SIGTERM to a local sweep: its worker saves at the next step boundary, the launcher exits 143 naming
  the preempted point, and the same command resumes it from its checkpoint to the end."""
  experiment = gpt_variant(tmp_path / "one_lr.py", 400, [1e-3])
  sweep_dir = str(tmp_path / "sweep")
  args = ["sweep", f"--config={experiment}:size=tiny", f"--workdir={sweep_dir}", "--report_plots=false"]
  dirs = lambda: sorted(os.path.join(sweep_dir, p) for p in os.listdir(sweep_dir) if p.startswith("lr="))
  proc = start(args, bbc_data_dir, compilation_cache)
  _wait_until(lambda: os.path.isdir(sweep_dir) and len(dirs()) == 1 and all(
      os.path.exists(os.path.join(d, "metrics.jsonl")) and max(train_losses(d) or [0]) >= 20 for d in dirs()), proc)
  proc.send_signal(15)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  assert "error: sweep stopped by SIGTERM: 1 running point(s) saved and preempted" in err
  for d in dirs():
    with open(os.path.join(d, "outcome.json")) as f:
      assert json.load(f)["state"] == "preempted"
    assert os.listdir(os.path.join(d, "checkpoints"))  # saved at the step boundary
  launch(args, bbc_data_dir, cache_dir=compilation_cache)
  for d in dirs():
    assert json.load(open(os.path.join(d, "metrics.json")))["step"] == 400
    assert len(_intervals(d)) == 2 and sorted(train_losses(d)) == list(range(1, 401))
  logs = "".join(open(os.path.join(root, f)).read() for root, _, files in os.walk(os.path.join(sweep_dir, "submitit"))
                 for f in files if f.endswith(".out"))
  assert logs.count("Resumed from step") == 1


def test_a_search_shares_one_optuna_study_between_two_local_workers(tmp_path, bbc_data_dir):
  """experiments/ngram.py's get_search_space(): 4 trials by 2 worker processes through one journal file;
  every trial number once, both workers take part, and each trial's directory holds its result."""
  sweep_dir = str(tmp_path / "search")
  out = launch(["sweep", "--search", f"--config={ROOT}/experiments/ngram.py:size=tiny", f"--workdir={sweep_dir}",
                "--max_parallel=2", "--report_plots=false"], bbc_data_dir).stdout
  assert "by 2 worker(s)" in out and "best validation.loss" in out
  finished = int(out.split("\nsearch: ")[1].split(" complete")[0])
  assert 4 <= finished <= 5  # a worker may start one trial more while the other finishes the fourth
  from lmlab.sweeps import search
  trials = search.study(sweep_dir, search.check_space({"params": {"model.ngram_order": ("int", 2, 6)}})).trials
  assert len({t.number for t in trials}) == len(trials) == finished
  assert {t.user_attrs["worker"] for t in trials} == {0, 1}  # both workers drew trials from the one study
  for t in trials:  # a trial that drew a finished point's values reads its result instead of training again
    with open(os.path.join(t.user_attrs["workdir"], "metrics.json")) as f:
      assert json.load(f)["validation"]["loss"] == t.value

