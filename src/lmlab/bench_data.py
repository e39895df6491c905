"""Data-at-scale benchmark: python -m lmlab.bench_data [--corpus_mb 200,2048] [--workers 1,2] [--dir D].

For each corpus size, builds a synthetic plain-text corpus of that many MB from the shipped BBC articles
(repeated, each copy with its paragraphs shuffled and the articles in shuffled order; one article per
blank-line separated block, read with text_unit = "paragraph"), then measures, each in a fresh process:
  - the corpus tokenizer's training on its seeded sample (config.tokenizer.max_sentences lines);
  - `launch.py prepare` with each --workers count (the token shards are deleted in between): MB of text
    per second in all and per worker;
  - `launch.py` on the prepared data (config `--config`, a few steps): seconds from the start of the
    process to its first training step, with an empty and then a warm JAX compilation cache, and the
    training process's peak resident memory.
A benchmark, not a test: nothing is asserted. The corpus and cache stay in --dir (delete it after).
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

from lmlab.data import bbc_news, sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILE_MB = 64  # the corpus is written as files of about this size


def make_corpus(directory: str, megabytes: float, seed: int = 0) -> str:
  """Writes the synthetic corpus (see the module docstring) unless it is there; returns its glob."""
  done = os.path.join(directory, ".complete")
  if not os.path.exists(done):
    os.makedirs(directory, exist_ok=True)
    articles = []
    for topic in sorted(os.listdir(bbc_news.corpus_dir())):
      folder = os.path.join(bbc_news.corpus_dir(), topic)
      for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
          paragraphs = [p.strip() for p in sources.decode_text(f.read()).split("\n") if p.strip()]
        articles.append(paragraphs)
    rng = np.random.default_rng(seed)
    target, written, part = megabytes * 1e6, 0, 0
    out = None
    while written < target:
      for i in rng.permutation(len(articles)):
        paragraphs = [articles[i][j] for j in rng.permutation(len(articles[i]))]
        block = "\n".join(paragraphs) + "\n\n"
        if out is None or out.tell() >= FILE_MB * 1e6:
          if out:
            out.close()
          out = open(os.path.join(directory, f"part-{part:05d}.txt"), "w", encoding="utf-8")
          part += 1
        out.write(block)
        written += len(block.encode("utf-8"))
        if written >= target:
          break
    out.close()
    open(done, "w").close()
  return os.path.join(directory, "*.txt")


def _run(args: list[str], marker: str | None = None) -> tuple[str, float | None, float, float]:
  """launch.py `args` in a fresh process: (stdout, seconds until a line starting with `marker`
  appeared, wall seconds, peak resident MB of that process)."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  lines, seen = [], None
  for line in proc.stdout:
    lines.append(line)
    if seen is None and marker and line.lstrip().startswith(marker):
      seen = time.perf_counter() - start
  pid, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  out = "".join(lines)
  if proc.returncode:
    raise SystemExit(f"error: launch.py {' '.join(args)} failed (exit {proc.returncode}):\n{out[-3000:]}")
  return out, seen, time.perf_counter() - start, usage.ru_maxrss / 1024


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus_mb", default="200,2048", help="comma-separated corpus sizes in MB")
  parser.add_argument("--workers", default="1,2", help="comma-separated launch.py prepare --workers counts")
  parser.add_argument("--dir", default="/tmp/lmlab_bench_data", help="corpora and caches (not deleted)")
  parser.add_argument("--config", default=os.path.join(ROOT, "experiments", "gpt.py"), help="the training run")
  parser.add_argument("--steps", type=int, default=5, help="training steps of the timed run")
  args = parser.parse_args(argv)
  sizes = [float(x) for x in args.corpus_mb.split(",")]
  workers = [int(x) for x in args.workers.split(",")]
  rows = []
  for mb in sizes:
    corpus = make_corpus(os.path.join(args.dir, f"corpus-{mb:g}mb"), mb)
    cache_dir = os.path.join(args.dir, f"cache-{mb:g}mb")
    data = [f"--config={args.config}", "--config.data.source=text_files", f"--config.data.text_glob={corpus}",
            "--config.data.text_unit=paragraph", f"--config.data.cache_dir={cache_dir}"]
    row = {"corpus MB": mb}
    for count in workers:
      shutil.rmtree(os.path.join(cache_dir, "tokens"), ignore_errors=True)
      out, _, wall, _ = _run(["prepare", *data, f"--workers={count}"])
      train = re.search(r"split 'train'.*?([\d,]+) tokens from ([\d,.]+) MB.*?in ([\d.]+) s: ([\d.]+) MB/s in all, "
                        r"([\d.]+) MB/s per worker", out)
      tokenizer = re.search(r"Training the tokenizer", out)
      if tokenizer:
        row["prepare incl. tokenizer s"] = round(wall, 1)
      row["train tokens"] = train.group(1)
      row[f"{count} worker(s) MB/s"] = float(train.group(4))
      row[f"{count} worker(s) MB/s/worker"] = float(train.group(5))
    run = [*data, f"--workdir={os.path.join(args.dir, f'run-{mb:g}mb')}", f"--config.train.num_steps={args.steps}",
           "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.eval_batches=2",
           "--config.optim.warmup_steps=0", "--config.sample.max_new_tokens=1"]
    # Twice: with an empty JAX compilation cache (<cache_dir>/jax), then with the one the first run filled.
    shutil.rmtree(os.path.join(cache_dir, "jax"), ignore_errors=True)
    for cache_state in ("cold", "warm"):
      shutil.rmtree(os.path.join(args.dir, f"run-{mb:g}mb"), ignore_errors=True)
      out, first_step, wall, rss = _run(run, marker="step ")
      row[f"first step s ({cache_state} compile cache)"] = round(first_step, 1)
    row["train peak RSS MB"] = round(rss)
    row["train tok/s"] = re.findall(r"([\d,]+) tok/s", out)[-1]
    rows.append(row)
    print(" | ".join(f"{k} {v}" for k, v in row.items()), flush=True)
  print(f"max RSS of this process's children: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
  main()
