"""The data cache that runs share: corpus tokenizers and token shards (data/shards.py), keyed by what
they are made of, so a second run, a sweep's points or another host never redo them.

Layout under the cache directory (config.data.cache_dir, else $LMLAB_CACHE, else ~/.cache/lmlab):
  tokenizers/<corpus>-<key>.model    a corpus tokenizer: key = (training split's identity, tokenizer config)
  tokens/<corpus>/<split>-<key>/     a split's token shards: key = (split identity, tokenizer bytes, shards)
  examples/<dataset>-<key>.json      a TFDS split's examples as fine-tuning reads them (tasks/data.py):
                                     key = (dataset, data directory, its preparation, split,
                                     what is read)
A split's identity is what decides its text: a TFDS dataset's full name (config/version), data directory,
text feature and split string; text files' glob, document unit, validation percentage, role (train or
validation) and every file's name, size and modification time (an edited file makes a new key).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re

from lmlab.data import sources, tokenizer


def cache_dir(data_cfg) -> str:
  return os.path.abspath(os.path.expanduser(
      data_cfg.get("cache_dir") or os.environ.get("LMLAB_CACHE") or os.path.join("~", ".cache", "lmlab")))


def split_identity(data_cfg, split: str) -> dict:
  """What decides the documents of `split` (see the module docstring); JSON-able."""
  if data_cfg.source == "tfds":
    builder = sources.tfds_builder(data_cfg)
    return {"tfds": builder.info.full_name, "data_dir": os.path.abspath(builder.data_dir_root),
            "text_key": data_cfg.text_key, "split": split}
  paths = sources.text_file_paths(data_cfg)
  files = hashlib.sha256(json.dumps([(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]).encode())
  return {"text_glob": os.path.abspath(os.path.expanduser(data_cfg.text_glob)), "unit": data_cfg.text_unit,
          "eval_percent": data_cfg.text_eval_percent,
          "role": "validation" if split == data_cfg.eval_split else "train", "files": files.hexdigest()}


def digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def slug(text: str) -> str:
  """`text` as a readable file-name part (keys beside it make names unique)."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "_"


def corpus_name(data_cfg) -> str:
  """A readable directory name for the corpus: the TFDS name, or the text files' folder."""
  if data_cfg.source == "tfds":
    return slug(data_cfg.tfds_name)
  return slug(os.path.basename(os.path.dirname(os.path.abspath(os.path.expanduser(data_cfg.text_glob)))) or "text")


def tfds_examples(data_cfg, builder, what: dict, read):
  """read()'s JSON-able result for the TFDS dataset of `builder`, kept in the cache under `what` (the
  split and the features read): reading a TFDS split needs TensorFlow (about 10 s to import), so only the
  first run on a dataset pays for it. Written by temp + rename: a reader never sees half a file. A
  dataset without its dataset_info.json on disk (TFDS's mock data) is read every time."""
  name = builder.info.full_name
  info_path = os.path.join(builder.data_dir, "dataset_info.json")  # rewritten when it is prepared again
  if not os.path.exists(info_path):
    return read()
  info = os.stat(info_path)
  key = digest({"tfds": name, "data_dir": os.path.abspath(builder.data_dir_root), **what,
                "prepared": (info.st_size, info.st_mtime_ns)})
  path = os.path.join(cache_dir(data_cfg), "examples", f"{slug(name)}-{key}.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  value = read()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temp = f"{path}.{os.getpid()}.tmp"
  with open(temp, "w") as f:
    json.dump(value, f)
  os.replace(temp, path)
  return value


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive flock on `path` for the block, waiting as long as another process holds it (the kernel
  drops it when its holder dies; flock works across hosts on NFSv4 and Lustre)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)


def corpus_tokenizer(cfg, out=print) -> str:
  """The path of cfg's corpus tokenizer in the cache, trained there first (under a lock: one trainer per
  key) on a seeded sample of at most config.tokenizer.max_sentences lines of the training split."""
  data_cfg = cfg.data
  key = digest({"split": split_identity(data_cfg, data_cfg.train_split), "tokenizer": cfg.tokenizer.to_dict()})
  path = os.path.join(cache_dir(data_cfg), "tokenizers", f"{corpus_name(data_cfg)}-{key}.model")
  if os.path.exists(path):
    return path
  with file_lock(path + ".lock"):
    if not os.path.exists(path):  # nobody trained it while this process waited
      limit = cfg.tokenizer.max_sentences
      sample = f"a sample of at most {limit:,} lines" if limit else "every line"
      out(f"Training the tokenizer on {sample} of the training split into {path}")
      lines = tokenizer.sample_lines(sources.iter_documents(data_cfg, data_cfg.train_split),
                                     cfg.tokenizer.max_sentences, cfg.tokenizer.sample_seed)
      tokenizer.train(path, lines, cfg.tokenizer)
  return path
