"""The work directory of a run: created with its config.json, checked on resume, read back by sample and
predict; its tokenizer; and the JSON summaries process 0 writes there."""

import json
import os

import jax
import ml_collections
from jax.experimental import multihost_utils

from lmlab.data import sources, tokenizer
from lmlab.errors import ConfigError

# Sections that must not change when a pretraining work directory is resumed: they define the
# checkpoint's meaning.
FROZEN_ON_RESUME = ("model", "objective", "tokenizer", "data.seq_len", "data.source", "data.tfds_name",
                    "data.text_glob", "data.text_unit", "seed")


def _lookup(cfg, dotted):
  for key in dotted.split("."):
    cfg = cfg[key]
  return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg


def prepare(cfg, default: str | None = None, frozen: tuple[str, ...] = FROZEN_ON_RESUME) -> str:
  """Creates the work directory (cfg.workdir, else `default`, else runs/<name>) and saves config.json;
  refuses to resume a directory whose saved config differs in a `frozen` key."""
  workdir = cfg.workdir or default or os.path.join("runs", cfg.name)
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
  return workdir


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


def load_tokenizer(cfg, workdir: str):
  """The work directory's tokenizer; process 0 trains it on the training split if it is missing."""
  path = os.path.join(workdir, "tokenizer.model")
  if jax.process_index() == 0 and not os.path.exists(path):
    tokenizer.train(path, sources.load_documents(cfg.data, cfg.data.train_split), cfg.tokenizer)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("tokenizer")
  return tokenizer.load(path, cfg.tokenizer)
