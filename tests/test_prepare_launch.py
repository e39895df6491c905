"""`launch.py prepare` in subprocesses (the e2e tier): the README's command with local workers, a
preparation killed with SIGKILL and resumed at its unfinished shards, then a run that reads the shards
without preparing anything."""

import glob
import os
import signal
import time

import pytest

from launching import ROOT, launch, start
from lmlab.data import bbc_news

pytestmark = pytest.mark.e2e


def bbc_text_files(tmp_path, num_shards):
  """The BBC articles as the user's own text files (one document per file), in 8 shards."""
  return [f"--config={ROOT}/experiments/gpt.py:size=tiny", "--config.data.source=text_files",
          f"--config.data.text_glob={bbc_news.corpus_dir()}/*/*.txt", f"--config.data.num_shards={num_shards}",
          f"--config.data.cache_dir={tmp_path / 'cache'}"]


def finished_shards(tmp_path):
  return sorted(glob.glob(str(tmp_path / "cache" / "tokens" / "*" / "train-*" / "*-of-*.json")))


def test_a_killed_preparation_resumes_and_the_run_reads_its_shards(tmp_path, bbc_data_dir, compilation_cache):
  args = bbc_text_files(tmp_path, 16)
  proc = start(["prepare", *args, "--workers=1"], bbc_data_dir)
  deadline = time.monotonic() + 300
  while not finished_shards(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  done = len(finished_shards(tmp_path))
  assert 1 <= done < 16, done

  out = launch(["prepare", *args, "--workers=2"], bbc_data_dir).stdout
  assert "Training the tokenizer" not in out  # trained before the kill, kept in the cache
  assert f"Preparing {16 - done} of 16 token shard(s) of split 'train'" in out, out
  assert "Preparing 16 of 16 token shard(s) of split 'validation'" in out and "(2 worker(s))" in out
  assert "split 'train': 16 shard(s)" in out and "MB/s per worker" in out
  assert not glob.glob(str(tmp_path / "cache" / "tokens" / "*" / "*" / "*.tmp"))

  workdir = str(tmp_path / "run")
  run = launch([*args, "--config.train.num_steps=2", "--config.optim.warmup_steps=0", "--config.train.eval_batches=2", f"--workdir={workdir}"],
               bbc_data_dir, cache_dir=compilation_cache).stdout
  assert "Preparing" not in run and "Training the tokenizer" not in run, run
  assert "Data: " in run and "final eval at step 2" in run
  with open(os.path.join(workdir, "tokenizer.model"), "rb") as a, \
       open(glob.glob(str(tmp_path / "cache" / "tokenizers" / "*.model"))[0], "rb") as b:
    assert a.read() == b.read()  # the cached corpus tokenizer, copied into the work directory
