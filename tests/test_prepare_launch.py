"""`launch.py prepare` in subprocesses (the e2e tier): the README's command with local workers, a
preparation killed with SIGKILL and resumed at its unfinished shards, then a run that reads the shards
without preparing anything; the data benchmark's code path."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from launching import ROOT, launch, start, xla_flags
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

  shard = finished_shards(tmp_path)[3].replace(".json", ".tokens")
  with open(shard, "r+b") as f:
    f.seek(100)
    f.write(b"\xff\xff")
  proc = launch([*args, f"--workdir={tmp_path / 'second'}"], bbc_data_dir, check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert f"token shard {shard} does not match its checksum" in errors[0] and "delete" in errors[0]


def test_the_data_benchmark_runs(tmp_path, bbc_data_dir):
  """python -m lmlab.bench_data on a 1 MB corpus and the tiny GPT: the code path, not its speed."""
  proc = subprocess.run([sys.executable, "-m", "lmlab.bench_data", "--corpus_mb=1", "--workers=1",
                         f"--dir={tmp_path}", f"--config={ROOT}/experiments/gpt.py:size=tiny", "--steps=2"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, XLA_FLAGS=xla_flags()))
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  row = dict(item.rsplit(" ", 1) for item in proc.stdout.splitlines()[0].split(" | "))
  assert float(row["1 worker(s) MB/s"]) > 0 and int(row["train peak RSS MB"]) > 0
  assert float(row["first step s (cold compile cache)"]) > 0 and float(row["first step s (warm compile cache)"]) > 0
  assert len(glob.glob(str(tmp_path / "corpus-1mb" / "*.txt"))) == 1
