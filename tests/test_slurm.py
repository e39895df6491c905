"""Against a real one-node Slurm cluster (.ci/slurm.sh start; .ci/run starts it): a grid as a job array, a
point requeued mid-training, a data preparation as one array task per shard (the 2-task srun run is in
test_launch.py's two-process test). Without a
cluster these tests skip, except in CI (CI=true), where a missing cluster is a failure."""

import glob
import json
import os
import subprocess
import sys
import time

import pytest

from launching import ROOT, gpt_variant, launch, slurm_cluster_up, xla_flags

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster():
  if not slurm_cluster_up():
    pytest.skip("no Slurm cluster (start one as root: .ci/slurm.sh start)")


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def events(sweep_dir):
  with open(os.path.join(sweep_dir, "sweep.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_a_grid_runs_as_one_job_array_and_a_rerun_skips_it(cluster, tmp_path, bbc_data_dir):
  sweep_dir = str(tmp_path / "sweep")
  args = ["sweep", f"--config={ROOT}/experiments/ngram.py:size=tiny", f"--workdir={sweep_dir}", "--executor=slurm",
          "--array_parallelism=2", "--cpus_per_task=1", "--report_plots=false"]
  out = launch(args, bbc_data_dir).stdout
  queued = [e["job_id"] for e in events(sweep_dir) if e["state"] == "queued"]
  assert len(queued) == 4 and len({j.split("_")[0] for j in queued}) == 1  # one array, tasks _0.._3
  assert "4/4 done" in out and os.listdir(os.path.join(sweep_dir, "code"))  # ran from a code snapshot
  spans = []
  for point in (d for d in os.listdir(sweep_dir) if d.startswith("ngram_order=")):
    with open(os.path.join(sweep_dir, point, "provenance.json")) as f:
      (run,) = json.load(f)["runs"]
    assert run["argv"][1] == "sweep" and run["outcome"] == "finished"
    spans.append((run["started"], run["ended"]))  # ISO times of one clock compare as strings
  assert max(sum(a <= t < b for a, b in spans) for t, _ in spans) <= 2  # --array_parallelism=2
  again = launch(args, bbc_data_dir).stdout
  assert again.count(": done, skipped") == 4 and "submitted" not in again


def test_a_requeued_point_ends_with_the_losses_of_an_uninterrupted_run(cluster, tmp_path, bbc_data_dir,
                                                                     compilation_cache):
  """Slurm's time-limit warning (SIGUSR2) mid-training: the run saves at its next step boundary,
  submitit requeues the array task, and the requeued job resumes from the work directory."""
  experiment = gpt_variant(tmp_path / "one_point.py", 300, [1e-3])
  reference = str(tmp_path / "reference")
  launch([f"--config={experiment}:size=tiny", "--config.optim.lr=0.001", f"--workdir={reference}"], bbc_data_dir,
         cache_dir=compilation_cache)
  sweep_dir = str(tmp_path / "sweep")
  env = dict(os.environ, TFDS_DATA_DIR=bbc_data_dir, XLA_FLAGS=xla_flags(),
             JAX_COMPILATION_CACHE_DIR=compilation_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), "sweep", f"--config={experiment}:size=tiny",
                           f"--workdir={sweep_dir}", "--executor=slurm", "--report_plots=false"],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  point = None
  while time.monotonic() < deadline and proc.poll() is None:
    dirs = [d for d in os.listdir(sweep_dir) if d.startswith("lr=")] if os.path.isdir(sweep_dir) else []
    point = os.path.join(sweep_dir, dirs[0]) if dirs else None
    if point and os.path.exists(os.path.join(point, "metrics.jsonl")) and max(losses(point) or [0]) >= 40:
      break
    time.sleep(0.2)
  job = [e["job_id"] for e in events(sweep_dir) if e["state"] == "queued"][0]
  subprocess.run(["scancel", "--signal=USR2", job], check=True)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  logs = "".join(open(os.path.join(sweep_dir, "submitit", job, f)).read()
                 for f in os.listdir(os.path.join(sweep_dir, "submitit", job)) if f.endswith((".out", ".err")))
  assert "Requeued job" in logs and "Resumed from step" in logs, logs[-3000:]
  with open(os.path.join(point, "provenance.json")) as f:
    assert len(json.load(f)["runs"]) == 2  # started twice
  assert losses(point) == losses(reference)  # bitwise, across the requeue


def test_prepare_runs_one_array_task_per_shard(cluster, tmp_path, bbc_data_dir):
  cache_dir = tmp_path / "cache"
  args = ["prepare", f"--config={ROOT}/experiments/gpt.py:size=tiny", "--config.data.num_shards=3",
          f"--config.data.cache_dir={cache_dir}", "--executor=slurm", "--cpus_per_task=1"]
  out = launch(args, bbc_data_dir).stdout
  assert out.count("as a Slurm job array") == 2, out  # train and validation
  metas = [json.load(open(path)) for path in glob.glob(str(cache_dir / "tokens" / "*" / "*" / "*-of-00003.json"))]
  assert len(metas) == 6 and len({m["prepared_by"] for m in metas}) == 6  # each shard by its own task
  assert "split 'train': 3 shard(s)" in out and "split 'validation': 3 shard(s)" in out
  assert os.listdir(cache_dir / "slurm")  # the array's logs and code snapshot
  again = launch(args, bbc_data_dir).stdout
  assert "Slurm" not in again and "Preparing" not in again
