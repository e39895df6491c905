"""Stopping a run from outside, in subprocesses (the e2e tier): SIGTERM saves at the next step boundary, a
kill -9 leaves no lock, both reruns end identical; a full disk is one error line and the previous
checkpoint restores."""

import os
import subprocess

import pytest

from launching import TINY, launch, start, train_losses

pytestmark = pytest.mark.e2e


def wait_for_step(workdir, step, proc, timeout=300):
  """Blocks until the run's metrics.jsonl has reached `step` (or the process ended)."""
  import time
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")) and max(train_losses(workdir) or [0]) >= step:
      return
    time.sleep(0.2)
  raise AssertionError(f"the run did not reach step {step}: {proc.poll()}")


def test_sigterm_saves_and_a_kill_9_leaves_no_lock_and_the_reruns_end_identical(tmp_path, bbc_data_dir,
                                                                                compilation_cache):
  args = [*TINY, "--config.train.num_steps=300", "--config.train.checkpoint_every=50",
          "--config.train.eval_every=0"]
  straight = str(tmp_path / "straight")
  launch([*args, f"--workdir={straight}"], bbc_data_dir, cache_dir=compilation_cache)
  workdir = str(tmp_path / "stopped")
  run = [*args, f"--workdir={workdir}"]
  # SIGTERM mid-run: a checkpoint at the next step boundary, one error line, exit status 128 + 15.
  proc = start(run, bbc_data_dir, compilation_cache)
  wait_for_step(workdir, 60, proc)
  proc.send_signal(15)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(":")[0])
  assert str(stopped_at) in os.listdir(os.path.join(workdir, "checkpoints"))
  # kill -9 mid-run: the kernel drops the work-directory lock, so the rerun starts at once and resumes.
  proc = start(run, bbc_data_dir, compilation_cache)
  wait_for_step(workdir, stopped_at + 80, proc)
  proc.kill()
  proc.wait(timeout=60)
  stdout = launch(run, bbc_data_dir, cache_dir=compilation_cache).stdout
  assert "Resumed from step" in stdout
  assert train_losses(workdir) == train_losses(straight)  # bitwise, over both interruptions


def test_a_full_disk_is_one_error_line_and_the_previous_checkpoint_restores(tmp_path, bbc_data_dir,
                                                                            compilation_cache):
  """The work directory on a 2.5 MB tmpfs (mounted as root, as CI runs): the tokenizer and the checkpoint
  at step 10 fit, the one at step 20 does not."""
  disk = tmp_path / "disk"
  disk.mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(disk)], check=True)
  try:
    workdir = str(disk / "run")
    proc = launch([*TINY, f"--workdir={workdir}"], bbc_data_dir, check=False, cache_dir=compilation_cache)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no space left on the device" in errors[0], proc.stderr[-3000:]
    assert "resume from checkpoint 10, which is intact" in errors[0] and "Traceback" not in proc.stderr
    sampled = launch(["sample", f"--workdir={workdir}", "--prompt=The", "--max_new_tokens=3"], bbc_data_dir,
                     cache_dir=compilation_cache)
    assert sampled.stdout.count("The -> ") == 1  # checkpoint 10 restores
  finally:
    subprocess.run(["umount", str(disk)], check=True)
