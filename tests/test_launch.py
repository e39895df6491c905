"""End to end through launch.py on the tiny preset: train, resume with identical losses, sample, errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from launching import ROOT, TINY, launch


def train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_train_writes_metrics_checkpoints_and_samples(tiny_run):
  workdir, stdout = tiny_run
  assert f"Work directory: {workdir}" in stdout and "step     20/20 | loss" in stdout
  assert "over 2 cpu devices" in stdout
  with open(os.path.join(workdir, "metrics.json")) as f:
    summary = json.load(f)
  assert summary["step"] == 20 and summary["parameters"] > 0
  losses = train_losses(workdir)
  assert sorted(losses) == list(range(1, 21))
  assert losses[20] < losses[1] - 0.5, "training must reduce the loss"
  assert 0 < summary["validation"]["loss"] < losses[1]
  assert summary["validation"]["perplexity"] == pytest.approx(2.718281828 ** summary["validation"]["loss"], rel=1e-6)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
  assert stdout.count("sample: ") == 2


def test_resume_repeats_the_uninterrupted_losses(tiny_run, tmp_path, bbc_data_dir):
  workdir, _ = tiny_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  # Pretend the run died after the checkpoint at step 10.
  shutil.rmtree(os.path.join(resumed, "checkpoints", "20"))
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    rows = [line for line in f if json.loads(line)["step"] <= 10]
  with open(os.path.join(resumed, "metrics.jsonl"), "w") as f:
    f.writelines(rows)
  stdout = launch([*TINY, f"--workdir={resumed}"], bbc_data_dir, devices=2).stdout
  assert "Resumed from step 10" in stdout
  expected, got = train_losses(workdir), train_losses(resumed)
  assert sorted(got) == list(range(1, 21))
  for step in range(11, 21):
    assert got[step] == pytest.approx(expected[step], rel=1e-5), step


def test_sample_command_is_reproducible(tiny_run, bbc_data_dir):
  workdir, _ = tiny_run
  args = ["sample", f"--workdir={workdir}", "--prompt=The government", "--prompt=Shares",
          "--max_new_tokens=6", "--seed=3"]
  first = launch(args, bbc_data_dir).stdout
  assert first.count("The government -> ") == 1 and first.count("Shares -> ") == 1
  assert launch(args, bbc_data_dir).stdout == first
  greedy = launch([*args[:4], "--temperature=0"], bbc_data_dir).stdout
  assert greedy.count(" -> ") == 2


@pytest.mark.parametrize("args, message", [
    (["--config.model.num_heads=3"], "not divisible by config.model.num_heads = 3"),
    (["--config.mesh.fsdp=3"], "does not fit 1 devices"),
    (["bogus"], "Unknown command 'bogus'"),
    (["sample"], "is not an lmlab work directory"),
])
def test_bad_input_fails_before_compute(args, message, tmp_path, bbc_data_dir):
  workdir = tmp_path / "never"
  proc = launch([*TINY, f"--workdir={workdir}", *args], bbc_data_dir, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not workdir.exists()


def test_resuming_with_another_model_is_refused(tiny_run, bbc_data_dir):
  workdir, _ = tiny_run
  proc = launch([*TINY, f"--workdir={workdir}", "--config.model.d_model=32"], bbc_data_dir, check=False)
  assert proc.returncode != 0 and "different config.model" in proc.stderr


def test_damaged_checkpoint_is_reported_and_kept(tiny_run, tmp_path, bbc_data_dir):
  workdir, _ = tiny_run
  damaged = str(tmp_path / "damaged")
  shutil.copytree(workdir, damaged)
  for folder, _, names in os.walk(os.path.join(damaged, "checkpoints", "20", "state")):
    for name in names:  # flip bytes in the middle of every array-data file
      path = os.path.join(folder, name)
      if os.path.basename(folder) == "d":
        data = bytearray(open(path, "rb").read())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        open(path, "wb").write(bytes(data))
  proc = launch([*TINY, f"--workdir={damaged}"], bbc_data_dir, check=False)
  assert proc.returncode != 0
  assert "Cannot restore the checkpoint" in proc.stderr and "checkpoints/20" in proc.stderr
  assert "Event loop is closed" not in proc.stderr
  assert sorted(os.listdir(os.path.join(damaged, "checkpoints"))) == ["10", "20"]  # nothing deleted


@pytest.mark.parametrize("experiment, expect", [
    ("bert.py:size=tiny", ["objective mlm_nsp", "nsp accuracy", "sample: Shares in the [MASK] rose sharply. -> [MASK] 1: "]),
    ("lstm.py:size=tiny,cell=gru", ["objective causal_lm", "step     20/20", "sample: The government said -> "]),
    ("t5.py:size=tiny", ["objective span_corruption", "sample: Shares in the <extra_id_0> sharply on "]),
    ("ngram.py:size=tiny,order=3", ["3-gram Kneser-Ney: validation loss"]),
])
def test_other_families_train_evaluate_and_sample(experiment, expect, request, tmp_path, bbc_data_dir):
  if experiment.startswith("bert"):
    workdir, stdout = request.getfixturevalue("tiny_bert_run")
  else:
    workdir = str(tmp_path / "run")
    stdout = launch([f"--config={ROOT}/experiments/{experiment}", f"--workdir={workdir}"], bbc_data_dir).stdout
  for text in expect:
    assert text in stdout, (text, stdout[-2000:])
  with open(os.path.join(workdir, "metrics.json")) as f:
    validation = json.load(f)["validation"]
  assert 1.0 < validation["perplexity"] < 512  # better than uniform over the tiny 512-piece vocabulary
  if "ngram" not in experiment:
    beams = ["--beam_size=2"] if "t5" in experiment else []
    sampled = launch(["sample", f"--workdir={workdir}", "--prompt=The [MASK] said", "--max_new_tokens=4",
                      *beams], bbc_data_dir).stdout
    assert sampled.count("The [MASK] said -> ") == 1


def test_two_processes_train_like_one_process_with_two_devices(tiny_run, tmp_path, bbc_data_dir):
  """Multi-host on 127.0.0.1: two processes with one device each train like the 2-device run. Each process
  packs its own half of the documents, so the rows differ and the losses agree only closely."""
  workdir = str(tmp_path / "two")
  env = dict(os.environ, TFDS_DATA_DIR=bbc_data_dir, XLA_FLAGS="--xla_force_host_platform_device_count=1")
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
  with open(os.path.join(workdir, "metrics.json")) as f, open(os.path.join(tiny_run[0], "metrics.json")) as g:
    assert json.load(f)["validation"]["loss"] == pytest.approx(json.load(g)["validation"]["loss"], rel=2e-2)
