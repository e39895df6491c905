"""The work directory of a run: created with its config.json and locked for the run's lifetime, checked on
resume, read back by sample and predict; its tokenizer; and the JSON summaries process 0 writes there."""

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

import jax
import ml_collections
from jax.experimental import multihost_utils

from lmlab.data import cache, tokenizer
from lmlab.errors import ConfigError, UserError
from lmlab.train import provenance

LOCK_FILE = ".lock"

# Sections that must not change when a pretraining work directory is resumed: they define the
# checkpoint's meaning (the tokenizer's sample settings do not: its file is in the work directory).
FROZEN_ON_RESUME = ("model", "objective", "tokenizer.vocab_size", "tokenizer.model_type",
                    "tokenizer.character_coverage", "tokenizer.num_sentinels", "data.seq_len", "data.source",
                    "data.tfds_name", "data.text_glob", "data.text_unit", "seed")


def _lookup(cfg, dotted):
  for key in dotted.split("."):
    cfg = cfg[key]
  return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg


@contextlib.contextmanager
def run_in(cfg, default: str | None = None, frozen: tuple[str, ...] = FROZEN_ON_RESUME):
  """`with run_in(cfg) as workdir:` the work directory (cfg.workdir, else `default`, else runs/<name>),
  created, locked for the block (see `lock`) and holding the run's config.json; a directory whose saved
  config differs in a `frozen` key is refused (resuming it would mix two experiments)."""
  workdir = cfg.workdir or default or os.path.join("runs", cfg.name)
  with lock(workdir, cfg.train.get("lock_wait_s", 0.0)):
    _save_config(cfg, workdir, frozen)
    entry = provenance.start(workdir)
    try:
      yield workdir
    except BaseException as e:
      provenance.end(workdir, entry, f"error: {type(e).__name__}: {' '.join(str(e).split())[:500]}")
      raise
    provenance.end(workdir, entry, "finished")


@contextlib.contextmanager
def lock(workdir: str, wait_s: float = 0.0):
  """One live run per work directory: process 0 holds an exclusive flock on workdir/.lock while the
  block runs. The kernel releases it when the process dies, so a kill -9 leaves no stale lock (flock,
  not POSIX lockf, which any close of the file in this process would release). A second run waits up to
  wait_s seconds, then fails with one UserError naming the holder's pid and host."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    deadline = time.monotonic() + wait_s
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
          holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
          raise UserError(f"{workdir} is in use: {holder} is running there. Wait for it to finish or stop "
                          "it, or use another --workdir (config.train.lock_wait_s waits for a lock).") from e
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


def _save_config(cfg, workdir: str, frozen: tuple[str, ...]) -> None:
  saved_path = os.path.join(workdir, "config.json")
  if os.path.exists(saved_path):
    saved = load_config(workdir)
    for key in frozen:
      if json.dumps(_lookup(saved, key), sort_keys=True) != json.dumps(_lookup(cfg, key), sort_keys=True):
        raise ConfigError(
            f"{workdir} was started with a different config.{key} ({_lookup(saved, key)} != "
            f"{_lookup(cfg, key)}); resuming it would mix two experiments. Use another --config.workdir, "
            "or the original setting.")
  write_json(workdir, "config.json", cfg.to_dict())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{workdir} has no config.json: it is not an lmlab work directory.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def write_json(workdir: str, name: str, value) -> None:
  """Process 0 writes `value` to workdir/name atomically (temp file + rename)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)


def load_tokenizer(cfg, workdir: str, out=print):
  """The work directory's tokenizer; if it is missing, process 0 copies the corpus tokenizer from the data
  cache (training it there first if no run has: data/cache.py)."""
  path = os.path.join(workdir, "tokenizer.model")
  if jax.process_index() == 0 and not os.path.exists(path):
    with open(cache.corpus_tokenizer(cfg, out), "rb") as f:
      tokenizer.save_model(path, f.read())
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("tokenizer")
  return tokenizer.load(path, cfg.tokenizer)
