"""Token shards: a split tokenized once into memory-mappable files, read by every later run.

A split is cut into `num_shards` contiguous shards (sources.iter_documents). Shard i of n is three files
in its cache directory (data/cache.py):
  NNNNN-of-MMMMM.tokens   the documents' token ids ([BOS] ids [EOS] each), uint16 (uint32 for a
                          vocabulary over 65,536), concatenated
  NNNNN-of-MMMMM.starts   int64: each document's offset in .tokens, then its length
  NNNNN-of-MMMMM.json     counts, dtype, SHA-256 of both files, unknown tokens, text bytes, seconds
The .json is written last, each file by temp + rename: a shard with a .json is complete, one without is
prepared again (a killed preparation resumes at its first unfinished shard). A per-shard flock makes
concurrent runs, sweep workers and hosts wait for each other instead of preparing a shard twice.

Process p of P reads the contiguous block of shards [p n / P, (p + 1) n / P) as one document stream
(documents.Documents) and maps nothing else.
"""

import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import socket
import tempfile
import time

import ml_collections
from absl import logging
import numpy as np
import sentencepiece as spm

from lmlab.data import cache, sources, tokenizer
from lmlab.data.documents import Documents
from lmlab.errors import DataError

# The automatic shard count gives each shard about this much text.
SHARD_BYTES = 64 * 2**20
_CHUNK_DOCS = 2048  # documents encoded per sentencepiece call (bounds a worker's memory)


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One shard to prepare: everything a worker process (local or a Slurm array task) needs."""
  data: dict  # config.data
  split: str
  index: int
  num_shards: int
  tokenizer_path: str
  directory: str
  threads: int = -1  # sentencepiece encoding threads (-1: every core)

  @property
  def stem(self) -> str:
    return os.path.join(self.directory, f"{self.index:05d}-of-{self.num_shards:05d}")


def plan(data_cfg, split: str, tokenizer_path: str, process_count: int = 1) -> list[ShardTask]:
  """The shards of `split` for this tokenizer, in order; their directory holds info.json (what they are)."""
  num_shards = data_cfg.get("num_shards", 0) or max(
      math.ceil(sources.text_bytes(data_cfg, split) / SHARD_BYTES), process_count)
  if num_shards < process_count:
    raise DataError(f"config.data.num_shards = {num_shards} is less than the {process_count} processes, which "
                    f"each read their own shards; set it to a multiple of {process_count} (or 0: automatic).")
  with open(tokenizer_path, "rb") as f:
    tokenizer_sha = hashlib.sha256(f.read()).hexdigest()
  info = {"split": cache.split_identity(data_cfg, split), "tokenizer_sha256": tokenizer_sha,
          "num_shards": num_shards}
  directory = os.path.join(cache.cache_dir(data_cfg), "tokens", cache.corpus_name(data_cfg),
                           f"{cache.slug(split)}-{cache.digest(info)}")
  if not os.path.exists(os.path.join(directory, "info.json")):
    _write_json(os.path.join(directory, "info.json"), info)
  data = data_cfg.to_dict() if isinstance(data_cfg, ml_collections.ConfigDict) else dict(data_cfg)
  return [ShardTask(data, split, i, num_shards, os.path.abspath(tokenizer_path), directory)
          for i in range(num_shards)]


def process_block(tasks: list, process_index: int, process_count: int) -> list:
  """The contiguous block of shards process `process_index` of `process_count` reads."""
  n = len(tasks)
  return tasks[process_index * n // process_count:(process_index + 1) * n // process_count]


def is_prepared(task: ShardTask) -> bool:
  return os.path.exists(task.stem + ".json")


def prepare_shard(task: ShardTask) -> dict:
  """Tokenizes one shard into its files (see the module docstring) and returns its metadata with
  now=True; a shard another process prepared meanwhile is read, not redone (now=False)."""
  _quiet()
  with cache.file_lock(task.stem + ".lock"):
    if is_prepared(task):
      return dict(read_meta(task), now=False)
    for stale in glob.glob(os.path.join(task.directory, f".{task.index:05d}-*.tmp")):
      os.unlink(stale)  # left by a killed preparation of this shard (we hold its lock)
    start_time = time.perf_counter()
    data_cfg = ml_collections.ConfigDict(task.data)
    sp = spm.SentencePieceProcessor(model_file=task.tokenizer_path)
    dtype = np.uint16 if sp.get_piece_size() <= 2**16 else np.uint32
    tokens_tmp, starts_tmp = (_temp(task, ext) for ext in ("tokens", "starts"))
    token_hash, lengths, text_bytes, unknown = hashlib.sha256(), [], 0, 0
    with open(tokens_tmp, "wb") as out:
      for chunk in _chunks(sources.iter_documents(data_cfg, task.split, task.index, task.num_shards)):
        text_bytes += sum(len(d.encode("utf-8")) for d in chunk)
        encoded = tokenizer.encode_documents(sp, chunk, task.threads)
        ids = np.concatenate(encoded).astype(dtype).tobytes()
        unknown += sum(int(np.count_nonzero(e == tokenizer.UNK_ID)) for e in encoded)
        lengths.extend(len(e) for e in encoded)
        out.write(ids)
        token_hash.update(ids)
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    with open(starts_tmp, "wb") as out:
      out.write(starts.tobytes())
    meta = {"num_tokens": int(starts[-1]), "num_docs": len(lengths), "dtype": np.dtype(dtype).name,
            "tokens_sha256": token_hash.hexdigest(), "starts_sha256": hashlib.sha256(starts.tobytes()).hexdigest(),
            "unknown_tokens": unknown, "text_bytes": text_bytes,
            "seconds": round(time.perf_counter() - start_time, 3),
            "prepared_by": f"pid {os.getpid()} on {socket.gethostname()}"}
    for tmp, ext in ((tokens_tmp, ".tokens"), (starts_tmp, ".starts")):
      os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
      os.replace(tmp, task.stem + ext)
    _write_json(task.stem + ".json", meta)
    return dict(meta, now=True)


def prepare(tasks: list[ShardTask], workers: int = 1, out=print) -> list[dict]:
  """Prepares the shards of `tasks` not prepared yet, `workers` at a time (local processes; 1: here);
  returns every task's metadata, in order."""
  todo = [t for t in tasks if not is_prepared(t)]
  if todo:
    workers = max(1, min(workers, len(todo)))
    out(f"Preparing {len(todo)} of {len(tasks)} token shard(s) of split {tasks[0].split!r} into "
        f"{tasks[0].directory} ({workers} worker(s))")
    threads = max(1, (os.cpu_count() or 1) // workers)
    todo = [dataclasses.replace(t, threads=threads) for t in todo]
    if workers == 1:
      for task in todo:
        _report(prepare_shard(task), task, out)
    else:
      # spawn: the parent may hold TensorFlow's and JAX's threads, which fork would copy half-alive.
      with concurrent.futures.ProcessPoolExecutor(workers, multiprocessing.get_context("spawn")) as pool:
        for task, meta in zip(todo, pool.map(prepare_shard, todo)):
          _report(meta, task, out)
  return [read_meta(t) for t in tasks]


def _report(meta: dict, task: ShardTask, out) -> None:
  if not meta["now"]:
    out(f"  shard {task.index + 1}/{task.num_shards}: prepared meanwhile by {meta['prepared_by']}")
    return
  rate = meta["text_bytes"] / 1e6 / max(meta["seconds"], 1e-9)
  out(f"  shard {task.index + 1}/{task.num_shards}: {meta['num_docs']:,} documents, {meta['num_tokens']:,} tokens "
      f"from {meta['text_bytes'] / 1e6:.1f} MB of text in {meta['seconds']:.1f} s ({rate:.1f} MB/s)")


def _quiet() -> None:
  """A worker process logs what launch.py would let through (TFDS warns about its own internals)."""
  if os.environ.get("LMLAB_VERBOSE", "") in ("", "0"):
    logging.set_verbosity(logging.FATAL)


def read_meta(task: ShardTask) -> dict:
  with open(task.stem + ".json") as f:
    return json.load(f)


def totals(metas: list[dict]) -> dict:
  """The summed counts of shards: num_tokens, num_docs, unknown_tokens, text_bytes."""
  return {key: sum(m[key] for m in metas) for key in ("num_tokens", "num_docs", "unknown_tokens", "text_bytes")}


def open_shards(tasks: list[ShardTask], verify: bool = True) -> tuple[Documents, dict]:
  """The prepared shards of `tasks` as one memory-mapped document stream, and their summed counts
  (num_tokens, num_docs, unknown_tokens, text_bytes). Checks each shard's file sizes (and with `verify`
  its checksums) and raises one DataError naming a damaged or missing file and the fix."""
  pieces, metas = [], []
  for task in tasks:
    if not is_prepared(task):
      raise DataError(f"token shard {task.stem}.json is missing: the shard was never prepared; run "
                      "python launch.py prepare with this config (or start the run again) to prepare it.")
    meta = read_meta(task)
    dtype = np.dtype(meta["dtype"])
    files = ((".tokens", meta["num_tokens"] * dtype.itemsize, meta["tokens_sha256"]),
             (".starts", (meta["num_docs"] + 1) * 8, meta["starts_sha256"]))
    for ext, size, sha in files:
      path = task.stem + ext
      problem = ("is missing" if not os.path.exists(path) else
                 f"has {os.path.getsize(path):,} bytes, not {size:,}" if os.path.getsize(path) != size else
                 "does not match its checksum" if verify and _sha256(path) != sha else None)
      if problem:
        raise DataError(f"token shard {path} {problem} (damaged or deleted): delete {task.stem}.* and start "
                        "again to prepare that shard anew.")
    pieces.append((_map(task.stem + ".tokens", dtype, meta["num_tokens"]),
                   _map(task.stem + ".starts", np.int64, meta["num_docs"] + 1)))
    metas.append(meta)
  return Documents(pieces), totals(metas)


def _map(path: str, dtype, count: int) -> np.ndarray:
  if count == 0:  # an empty file cannot be mapped
    return np.zeros(0, dtype)
  return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _temp(task: ShardTask, ext: str) -> str:
  fd, path = tempfile.mkstemp(dir=task.directory, prefix=f".{task.index:05d}-", suffix=f".{ext}.tmp")
  os.close(fd)
  return path


def _chunks(items, size: int = _CHUNK_DOCS):
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _write_json(path: str, value) -> None:
  """Atomically, from a temporary file of its own: concurrent writers (processes, hosts or threads of one
  process, which share a pid) never rename each other's file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}-", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def split_documents(cfg, split: str, tokenizer_path: str, process_index: int = 0, process_count: int = 1,
                    out=print) -> tuple[Documents, dict]:
  """This process's documents of `split`: its block of shards, prepared first where missing
  (config.data.prepare_workers local processes), then mapped and checked."""
  tasks = process_block(plan(cfg.data, split, tokenizer_path, process_count), process_index, process_count)
  prepare(tasks, cfg.data.prepare_workers, out)
  docs, counts = open_shards(tasks, cfg.data.verify_shards)
  if not docs.num_tokens:
    raise DataError(f"Split {split!r} has no documents for process {process_index} of {process_count} (shards "
                    f"{tasks[0].index + 1}-{tasks[-1].index + 1} of {tasks[0].num_shards} in {tasks[0].directory}); "
                    "use more data, a larger split or fewer config.data.num_shards.")
  return docs, counts
