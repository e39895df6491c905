"""The command line itself, in subprocesses (the e2e tier): train, resume with identical losses, sample,
fine-tune and predict through launch.py; one `error:` line and a non-zero exit for bad input; two
processes on 127.0.0.1. Whole runs of every family are tested in-process (test_runs.py)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from launching import ROOT, TINY, launch, slurm_cluster_up, train_losses, xla_flags

pytestmark = pytest.mark.e2e


def test_train_writes_metrics_checkpoints_and_samples(tiny_run):
  workdir, stdout = tiny_run
  assert f"Work directory: {workdir}" in stdout and "step     20/20 | loss" in stdout
  assert "over 2 cpu devices" in stdout and stdout.count("sample: ") == 2
  assert "Peak for MFU: 1 x this host's measured float32 matmul peak" in stdout and "tok/s | MFU " in stdout
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["step"] == 20
  assert sorted(train_losses(workdir)) == list(range(1, 21))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]


def test_resume_repeats_the_uninterrupted_losses(tiny_run, tmp_path, bbc_data_dir, compilation_cache):
  workdir, _ = tiny_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  # Pretend the run died after the checkpoint at step 10.
  shutil.rmtree(os.path.join(resumed, "checkpoints", "20"))
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    rows = [line for line in f if json.loads(line)["step"] <= 10]
  with open(os.path.join(resumed, "metrics.jsonl"), "w") as f:
    f.writelines(rows)
  proc = launch([*TINY, f"--workdir={resumed}"], bbc_data_dir, devices=2, cache_dir=compilation_cache,
                python_flags=("-X", "importtime"))
  assert "Resumed from step 10" in proc.stdout
  assert train_losses(resumed) == train_losses(workdir)
  # Training, evaluation, checkpoints, TensorBoard events and samples without TensorFlow (~10 s to import).
  assert not re.search(r"\|\s+tensorflow(\.|$)", proc.stderr, re.M)


def test_sample_command_is_reproducible(tiny_run, bbc_data_dir, compilation_cache):
  workdir, _ = tiny_run
  args = ["sample", f"--workdir={workdir}", "--prompt=The government", "--prompt=Shares",
          "--max_new_tokens=6", "--seed=3", "--temperature=0.9"]
  first = launch(args, bbc_data_dir, cache_dir=compilation_cache).stdout
  assert first.count("The government -> ") == 1 and first.count("Shares -> ") == 1
  assert launch(args, bbc_data_dir, cache_dir=compilation_cache).stdout == first


@pytest.mark.parametrize("args, message", [
    (["--config.model.num_heads=3"], "not divisible by config.model.num_heads = 3"),
    (["--config.mesh.fsdp=3"], "does not fit 1 devices"),
    (["bogus"], "Unknown command 'bogus'"),
    (["sample"], "is not an lmlab work directory"),
    (["--config.model.dmodel=3"], 'no config field \'dmodel\' Did you mean "d_model"'),
    (["--config.data.source=text_files", "--config.data.text_glob=/nowhere/*.txt"], "matches no files"),
    (["prepare", "--workers=0"], "--workers=0 must be at least 1"),
])
def test_bad_input_is_one_error_line_before_compute(args, message, tmp_path, bbc_data_dir):
  workdir = tmp_path / "never"
  proc = launch([*TINY, f"--workdir={workdir}", *args], bbc_data_dir, check=False)
  assert proc.returncode != 0
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_no_intact_checkpoint_is_one_error_line(tiny_run, tmp_path, bbc_data_dir, compilation_cache):
  workdir, _ = tiny_run
  damaged = str(tmp_path / "damaged")
  shutil.copytree(workdir, damaged)
  for step in ("10", "20"):
    for folder, _, names in os.walk(os.path.join(damaged, "checkpoints", step, "state")):
      for name in names:  # flip bytes in the middle of every array-data file
        path = os.path.join(folder, name)
        if os.path.basename(folder) == "d":
          data = bytearray(open(path, "rb").read())
          mid = len(data) // 2
          data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
          open(path, "wb").write(bytes(data))
  proc = launch([*TINY, f"--workdir={damaged}"], bbc_data_dir, check=False, cache_dir=compilation_cache)
  assert proc.returncode != 0
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "No intact checkpoint is left" in errors[0], proc.stderr[-2000:]
  assert proc.stdout.count("warning: ") == 2 and "checkpoints/20" in proc.stdout
  assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr
  kept = os.listdir(os.path.join(damaged, "damaged_checkpoints"))
  assert sorted(name for name in kept if name.isdigit()) == ["10", "20"]  # nothing deleted


def test_finetune_and_predict_commands(tiny_run, tmp_path, bbc_data_dir, compilation_cache):
  pre_dir = tiny_run[0]
  workdir = str(tmp_path / "topic")
  stdout = launch([f"--config={ROOT}/experiments/finetune.py:size=tiny,task=topic", f"--workdir={workdir}",
                   f"--config.init_from={pre_dir}"], bbc_data_dir, cache_dir=compilation_cache).stdout
  assert f"pretrained tensors from {pre_dir} step 20" in stdout and "confusion matrix" in stdout
  texts = tmp_path / "texts.txt"
  texts.write_text("Shares in the bank rose after profits beat forecasts\n\nThe striker scored twice\n")
  out = launch(["predict", f"--workdir={workdir}", f"--input={texts}"], bbc_data_dir,
               cache_dir=compilation_cache).stdout.strip().splitlines()
  assert len(out) == 2 and all("(probabilities: " in line for line in out)
  probs = [float(part.split()[-1]) for part in out[0].split("(probabilities: ")[1].rstrip(")").split(", ")]
  assert len(probs) == 5 and sum(probs) == pytest.approx(1.0, abs=2e-3)
  assert out[0].split(" -> ")[1].split(" (")[0] in ("business", "entertainment", "politics", "sports", "tech")
  sample = launch(["sample", f"--workdir={workdir}"], bbc_data_dir, check=False)
  assert sample.returncode and "error: " in sample.stderr and "is a fine-tuning run" in sample.stderr


def test_two_processes_train_like_one_process_with_two_devices(tiny_run, tmp_path, bbc_data_dir):
  """Multi-host on 127.0.0.1: two processes with one device each train like the 2-device run. Each process
  packs its own half of the documents, so the rows differ and the losses agree only closely. Under srun
  with two tasks, the same run without flags."""
  workdir = str(tmp_path / "two")
  env = dict(os.environ, TFDS_DATA_DIR=bbc_data_dir, XLA_FLAGS=xla_flags())
  port = 20000 + os.getpid() % 20000
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *TINY, f"--workdir={workdir}",
                             "--num_processes=2", f"--process_id={i}", f"--coordinator_address=127.0.0.1:{port}"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "over 2 cpu devices, 2 process(es)" in outputs[0][0] and "loss" not in outputs[1][0]  # process 0 logs
  expected, got = train_losses(tiny_run[0]), train_losses(workdir)
  assert sorted(got) == sorted(expected)
  assert np.mean(list(got.values())) == pytest.approx(np.mean(list(expected.values())), rel=1e-2)
  assert got[20] < got[1] - 0.5
  # The same two processes as one srun step: jax.distributed finds the other task from Slurm's environment
  # (no flags), and the run is the same to the bit (on a Slurm cluster: .ci/slurm.sh start; CI has one).
  if not slurm_cluster_up():
    return
  srun = str(tmp_path / "srun")
  run = subprocess.run(["srun", "-n", "2", sys.executable, os.path.join(ROOT, "launch.py"), *TINY, f"--workdir={srun}"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "over 2 cpu devices, 2 process(es)" in run.stdout
  assert train_losses(srun) == got
  with open(os.path.join(workdir, "metrics.json")) as f, open(os.path.join(tiny_run[0], "metrics.json")) as g:
    assert json.load(f)["validation"]["loss"] == pytest.approx(json.load(g)["validation"]["loss"], rel=2e-2)


