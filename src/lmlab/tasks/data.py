"""Downstream (fine-tuning) task examples, held in memory: labelled datasets are small.

Tasks (config.task.name):
  bbc_topic            classification: a bbc_news article -> its topic (any bbc_news-like TFDS dataset).
  bbc_headline         generation: an article's body -> its headline.
  classification_file  the user's CSV / JSONL files with a text and a label column.
  generation_file      the user's CSV / JSONL files with a source and a target column.
  disfl_qa             question answering: a question about a context -> its answer ("" when the context
                       does not answer it), the disfl_qa TFDS dataset (data/disfl_qa.py), split by article.
  squad                the same task on TFDS `squad/v2.0` (or config.task.qa_tfds_name, e.g. squad/v1.1):
                       its validation split is the test split, and validation is carved out of train by
                       hashing the article title (validation_percent), so no article is in two splits.

When config.task.validation_file / test_file are "", those splits are carved out of train_file by hashing
the row's text (classification) or source (generation):
  bucket = int(md5(text).hexdigest(), 16) % 100
  bucket < validation_percent -> validation, < validation_percent + test_percent -> test, else train.
The ranges are fixed: a split given as a file leaves its range in train, so the carved split does not
move when the other one is given as a file. Hashing keeps duplicates together and ignores row order.
"""

import csv
import dataclasses
import hashlib
import json
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds  # imports TensorFlow only when a split is read

from lmlab.data import cache, sources
from lmlab.errors import DataError

KINDS = {"bbc_topic": "classification", "bbc_headline": "generation",
         "classification_file": "classification", "generation_file": "generation", "disfl_qa": "qa",
         "squad": "qa"}
QA_DATASETS = {"disfl_qa": "disfl_qa", "squad": "squad/v2.0"}  # task -> its TFDS dataset by default

_SPLITS = ("train", "validation", "test")
# Second word of the subset's seed: the run seed alone also seeds parameters and data order, and the
# label subset must not be correlated with them.
_SUBSET_STREAM = 0x7A5C
# (config key, role in error messages) of the two columns each file task reads.
_FIELDS = {
    "classification": (("text_field", "text"), ("label_field", "label")),
    "generation": (("source_field", "source"), ("target_field", "target")),
}
_EXTENSIONS = (".csv", ".jsonl")


@dataclasses.dataclass
class Split:
  """The examples of one split; `labels` for classification, `targets` for generation and question
  answering (the first gold answer, "" for an unanswerable question), and for question answering also
  the contexts, all gold answers and the first answer's character offset in its context (-1: none)."""
  texts: list[str]  # model input text (classification text, generation source, or question)
  labels: np.ndarray | None  # int32 [R] label ids (classification), else None
  targets: list[str] | None  # target strings (generation, question answering), else None
  contexts: list[str] | None = None  # question answering: the passage each question is about
  answers: list[list[str]] | None = None  # question answering: every gold answer ([""]: unanswerable)
  answer_starts: list[int] | None = None  # question answering: targets' character offset, -1 for ""

  def __len__(self) -> int:
    return len(self.texts)


@dataclasses.dataclass
class TaskData:
  """All splits of one task; `train` is already reduced to config.task.label_fraction."""
  name: str  # config.task.name
  kind: str  # "classification" | "generation"
  label_names: tuple[str, ...]  # class names, index = label id (() for generation)
  train: Split
  validation: Split
  test: Split
  train_size_full: int  # training examples before the label-fraction subset
  train_texts_full: list[str] = dataclasses.field(default_factory=list)  # their texts (tokenizer training)


def subset_indices(n: int, fraction: float, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
  """Sorted int64 indices of a seeded subset of range(n): max(1, round(fraction * n_c)) examples of every
  class c when `labels` are given (stratified), else max(1, round(fraction * n)) at random."""
  if not 0 < fraction <= 1:
    raise DataError(f"fraction = {fraction!r} is not in (0, 1].")
  if n < 0:
    raise DataError(f"n = {n} is negative.")
  if labels is None:
    groups = [np.arange(n, dtype=np.int64)]
  else:
    labels = np.asarray(labels)
    if labels.shape != (n,):
      raise DataError(f"labels have shape {labels.shape}, expected ({n},).")
    groups = [np.flatnonzero(labels == c).astype(np.int64) for c in np.unique(labels)]
  # SeedSequence takes only non-negative integers; the modulo keeps negative seeds usable and distinct.
  rng = np.random.default_rng([seed % 2**64, _SUBSET_STREAM])
  chosen = [rng.choice(g, size=max(1, round(fraction * len(g))), replace=False) for g in groups if len(g)]
  return np.sort(np.concatenate([np.zeros(0, np.int64)] + chosen)).astype(np.int64)


def load_task(cfg) -> TaskData:
  """The examples of config.task.name; reads only the config fields that task uses."""
  task = cfg.task
  if task.name not in KINDS:
    raise DataError(f"config.task.name = {task.name!r} is not one of {', '.join(KINDS)}.")
  fraction = task.label_fraction
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
    raise DataError(f"config.task.label_fraction = {fraction!r} is not in (0, 1]; e.g. 0.1 keeps 10% of "
                    "the training examples, 1.0 keeps all.")
  kind = KINDS[task.name]
  if task.name in ("bbc_topic", "bbc_headline"):
    label_names, splits = _bbc_splits(cfg.data, task.name)
  elif kind == "qa":
    label_names, splits = (), _qa_splits(cfg)
  else:
    label_names, splits = _file_splits(task, kind)
  train = splits["train"]
  keep = subset_indices(len(train), float(fraction), cfg.seed, train.labels)
  return TaskData(name=task.name, kind=kind, label_names=label_names, train=_take(train, keep),
                  validation=splits["validation"], test=splits["test"], train_size_full=len(train),
                  train_texts_full=list(train.texts))


def _take(split: Split, indices: np.ndarray) -> Split:
  """The examples of `split` at `indices`, in that order."""
  pick = lambda values: None if values is None else [values[i] for i in indices]
  return Split(texts=pick(split.texts), labels=None if split.labels is None else split.labels[indices],
               targets=pick(split.targets), contexts=pick(split.contexts), answers=pick(split.answers),
               answer_starts=pick(split.answer_starts))


# Question answering (TFDS disfl_qa, squad).


def qa_dataset(task) -> str:
  return task.qa_tfds_name or QA_DATASETS[task.name]


def _qa_splits(cfg) -> dict[str, Split]:
  """disfl_qa: its train / validation / test splits; SQuAD-format datasets: train minus the articles
  hashed into validation, and the dataset's validation split as test."""
  name = qa_dataset(cfg.task)
  builder = sources.tfds_builder(cfg.data, name=name, key="config.task.qa_tfds_name",
                                 hint=("disfl_qa is built from BIG-bench's file: put bigbench-1.0.0.tar.gz "
                                       "(from PyPI) in a directory and pass it as --config.data.tfds_manual_dir."
                                       if name.startswith("disfl_qa") else ""))
  features = builder.info.features
  squad_like = "answers" in features and "title" in features
  if not squad_like and "answer" not in features:
    raise DataError(f"config.task.qa_tfds_name = {name!r} is not a question-answering dataset: it needs the "
                    "features question, context and answer (disfl_qa) or answers + title (SQuAD); it has "
                    f"{', '.join(features)}.")
  if squad_like:
    for split in ("train", "validation"):
      if builder.info.splits and split not in builder.info.splits:  # (empty under tfds.testing.mock_data)
        raise DataError(f"config.task.qa_tfds_name = {name!r} has no {split!r} split.")
    train, titles = _qa_examples(cfg.data, builder, "train")
    val_percent = cfg.task.validation_percent
    to_val = np.array([_hash_split(t, val_percent, 0) == "validation" for t in titles], bool)
    if not 0 < to_val.sum() < len(to_val):
      raise DataError(f"config.task.validation_percent = {val_percent} leaves no article of {name!r} in "
                      "validation or in train; use a value between 1 and 99.")
    splits = {"train": _take(train, np.flatnonzero(~to_val)), "validation": _take(train, np.flatnonzero(to_val)),
              "test": _qa_examples(cfg.data, builder, "validation")[0]}
  else:
    splits = {split: _qa_examples(cfg.data, builder, split)[0] for split in _SPLITS}
  for split, examples in splits.items():
    if not examples:
      raise DataError(f"Split {split!r} of {name!r} has no examples.")
  return splits


def _qa_examples(data_cfg, builder, split: str) -> tuple[Split, list[str]]:
  """The split's questions (and their titles: "" without a title feature), read once into the data cache."""
  squad_like = "answers" in builder.info.features
  keys = ("question", "context") + (("answers", "title") if squad_like else ("answer", "answer_start"))
  read = lambda: _read_qa(builder, split, keys, squad_like)
  out, titles = cache.tfds_examples(data_cfg, builder, {"split": split, "qa": keys}, read)
  return Split(labels=None, targets=[a[0] for a in out["answers"]], **out), titles


def _read_qa(builder, split: str, keys: tuple[str, ...], squad_like: bool) -> tuple[dict, list[str]]:
  ds = builder.as_dataset(split=split, shuffle_files=False)
  out = {"texts": [], "contexts": [], "answers": [], "answer_starts": []}
  titles = []
  for ex in tfds.as_numpy(ds):
    ex = {k: ex[k] for k in keys}
    context = ex["context"].decode("utf-8")
    if squad_like:
      golds = [a.decode("utf-8").strip() for a in ex["answers"]["text"]]
      offsets = [int(x) for x in ex["answers"]["answer_start"]]
      titles.append(ex["title"].decode("utf-8"))
    else:
      golds, offsets = [ex["answer"].decode("utf-8").strip()], [int(ex["answer_start"])]
    golds, offsets = [g for g in golds if g], [o for g, o in zip(golds, offsets) if g]
    start = _locate(context, golds[0], offsets[0]) if golds else -1
    out["texts"].append(ex["question"].decode("utf-8").strip())
    out["contexts"].append(context)
    out["answers"].append(golds or [""])
    out["answer_starts"].append(start)
  return out, titles


def _locate(context: str, answer: str, offset: int) -> int:
  """The answer's character offset in its context: the given one if the text is there, else its first
  occurrence, else -1 (then the example teaches a span model nothing, but still counts in evaluation)."""
  if context[offset:offset + len(answer)] == answer:
    return offset
  return context.find(answer)


# bbc_news-like TFDS datasets.


def _bbc_splits(data_cfg, name: str) -> tuple[tuple[str, ...], dict[str, Split]]:
  builder = sources.tfds_builder(data_cfg)
  features = builder.info.features
  second = "label" if name == "bbc_topic" else "title"
  is_text = lambda k: sources.is_text_feature(features, k)
  is_label = isinstance(features["label"], tfds.features.ClassLabel) if "label" in features else False
  ok = is_text("text") and (is_label if second == "label" else is_text("title"))
  missing_splits = [s for s in _SPLITS if s not in builder.info.splits]
  if not ok or missing_splits:
    need = "a ClassLabel feature 'label'" if second == "label" else "a text feature 'title'"
    file_task = "classification_file" if second == "label" else "generation_file"
    raise DataError(
        f"config.data.tfds_name = {data_cfg.tfds_name!r} is not bbc_news-like: config.task.name = {name!r} "
        f"needs a text feature 'text', {need} and splits {', '.join(_SPLITS)}; it has features "
        f"{', '.join(features)} and splits {', '.join(builder.info.splits)}. Use tfds_name 'bbc_news', or "
        f"put the data in a file for config.task.name = {file_task!r}.")
  splits = {}
  for split in _SPLITS:
    columns = _tfds_columns(data_cfg, builder, split, ("text", second))
    texts = columns["text"]
    if second == "label":
      splits[split] = Split(texts=texts, labels=np.asarray(columns["label"], np.int32), targets=None)
    else:
      titles = [title.strip() for title in columns["title"]]
      pairs = [(_headline_source(data_cfg, text, title), title) for text, title in zip(texts, titles)]
      # Articles without a body (or a title) have nothing to learn from: drop them.
      pairs = [(source, title) for source, title in pairs if source and title]
      splits[split] = Split(texts=[s for s, _ in pairs], labels=None, targets=[t for _, t in pairs])
    if not splits[split]:
      raise DataError(f"Split {split!r} of config.data.tfds_name = {data_cfg.tfds_name!r} has no usable "
                      f"examples for config.task.name = {name!r}.")
  label_names = tuple(features["label"].names) if second == "label" else ()
  return label_names, splits


def _tfds_columns(data_cfg, builder, split: str, keys: tuple[str, ...]) -> dict[str, list]:
  """{key: values of `split` in the dataset's order: strings (UTF-8) or ints}; decodes only `keys`, once
  into the data cache."""

  def read():
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({k: True for k in keys}))
    columns = {k: [] for k in keys}
    for batch in tfds.as_numpy(ds.batch(1024)):
      for k in keys:
        columns[k].extend(v.decode("utf-8") if isinstance(v, bytes) else v.item() for v in batch[k])
    return columns

  return cache.tfds_examples(data_cfg, builder, {"split": split, "columns": keys}, read)


def _headline_source(data_cfg, text: str, title: str) -> str:
  """The article without its headline: the text after the first line, stripped."""
  lines = text.split("\n")
  if lines[0].strip() != title:
    raise DataError(f"config.data.tfds_name = {data_cfg.tfds_name!r}: an article's first line "
                    f"{lines[0][:80]!r} is not its title {title[:80]!r}; bbc_headline needs the headline as "
                    "the first line of `text`.")
  body = lines[1:]
  # A headline repeated at the top of the body would put the target into the input.
  while body and body[0].strip() in ("", title):
    body = body[1:]
  return "\n".join(body).strip()


# The user's CSV / JSONL files.


def _file_splits(task, kind: str) -> tuple[tuple[str, ...], dict[str, Split]]:
  """Everything is checked that can be (fields, files, percents) before any file is read."""
  fields = []  # (config key, column name, role)
  for key, role in _FIELDS[kind]:
    column = task[key]
    if not isinstance(column, str) or not column:
      raise DataError(f"config.task.{key} = {column!r} must name the {role} column of the files.")
    fields.append((f"config.task.{key}", column, role))
  paths = {split: task[f"{split}_file"] for split in _SPLITS}
  if not paths["train"]:
    raise DataError(f"config.task.name = {task.name!r} needs config.task.train_file: a .csv (with a "
                    f"header row) or .jsonl file with the columns {fields[0][1]!r} and {fields[1][1]!r}.")
  for split, path in paths.items():
    if path:
      _check_file(f"config.task.{split}_file", path)
  carved = [split for split in ("validation", "test") if not paths[split]]
  percents = _check_percents(task, carved)

  rows = {split: list(_read_rows(f"config.task.{split}_file = {path!r}", path, fields)) if path else []
          for split, path in paths.items()}
  if carved:
    kept = []
    for row in rows["train"]:
      dest = _hash_split(row[0], *percents)
      (rows[dest] if dest in carved else kept).append(row)
    rows["train"] = kept
  for split in _SPLITS:
    if rows[split]:
      continue
    if split in carved:
      raise DataError(f"The {split} split is empty: no row of config.task.train_file = {paths['train']!r} "
                      f"hashed into it. Raise config.task.{split}_percent (now {task[f'{split}_percent']}) "
                      f"or give config.task.{split}_file.")
    if split == "train" and carved:
      raise DataError(f"The train split is empty: every row of config.task.train_file = {paths['train']!r} "
                      f"went to {' / '.join(carved)}. Lower config.task.validation_percent / test_percent "
                      "or add rows.")
    raise DataError(f"The {split} split is empty: config.task.{split}_file = {paths[split]!r} has no rows.")

  texts = {split: [row[0] for row in rows[split]] for split in _SPLITS}
  if kind == "generation":
    return (), {split: Split(texts=texts[split], labels=None, targets=[row[1] for row in rows[split]])
                for split in _SPLITS}
  label_names = tuple(sorted({row[1] for row in rows["train"]}))
  if len(label_names) < 2:
    raise DataError(f"The train split of config.task.train_file = {paths['train']!r} has only the label "
                    f"{label_names[0]!r} in column {fields[1][1]!r}; classification needs at least two.")
  ids = {name: i for i, name in enumerate(label_names)}
  for split in ("validation", "test"):
    for _, label, where in rows[split]:
      if label not in ids:
        raise DataError(f"Label {label!r} of the {split} split ({where}) never occurs in the train split, "
                        f"whose labels are {', '.join(map(repr, label_names))}. Fix the label or add training "
                        "rows with it.")
  return label_names, {split: Split(texts=texts[split], targets=None,
                                    labels=np.array([ids[row[1]] for row in rows[split]], np.int32))
                       for split in _SPLITS}


def _check_file(key: str, path: str) -> None:
  ext = os.path.splitext(path)[1].lower()
  if ext not in _EXTENSIONS:
    raise DataError(f"{key} = {path!r} has extension {ext!r}; use a .csv file (with a header row) or a "
                    ".jsonl file (one JSON object per line).")
  if not os.path.isfile(os.path.expanduser(path)):
    full = os.path.abspath(os.path.expanduser(path))
    raise DataError(f"{key} = {path!r} does not exist (looked for {full}).")


def _check_percents(task, carved: list[str]) -> tuple[int, int]:
  """(validation_percent, test_percent); checked only when some split is carved out of train_file."""
  vp, tp = task.validation_percent, task.test_percent
  if not carved:
    return vp, tp
  for key, p in (("validation_percent", vp), ("test_percent", tp)):
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 100:
      raise DataError(f"config.task.{key} = {p!r} is not an integer in [0, 100].")
  # The test range starts after the validation range, so both must fit when test is carved.
  if "test" in carved and vp + tp > 100:
    raise DataError(f"config.task.validation_percent + test_percent = {vp} + {tp} exceeds 100.")
  return vp, tp


def _hash_split(text: str, validation_percent: int, test_percent: int) -> str:
  """md5, not hash(): the same split on every process and every run."""
  bucket = int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % 100
  if bucket < validation_percent:
    return "validation"
  if bucket < validation_percent + test_percent:
    return "test"
  return "train"


def _read_rows(where: str, path: str, fields: list[tuple[str, str, str]]) -> Iterator[tuple[str, str, str]]:
  """(first column, second column, "<where>, line N") of each row, values stripped and checked non-empty."""
  records = _csv_records if path.lower().endswith(".csv") else _jsonl_records
  try:
    for line, record in records(where, os.path.expanduser(path), fields):
      values = []
      for key, column, role in fields:
        value = record[column]
        value = "" if value is None else str(value).strip()
        if not value:
          raise DataError(f"{where}, line {line}: the {role} (column {column!r}, {key}) is empty; every "
                          "row needs one.")
        values.append(value)
      yield values[0], values[1], f"{where}, line {line}"
  except UnicodeDecodeError as e:
    raise DataError(f"{where} is not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8.") from e


def _csv_records(where: str, path: str, fields: list[tuple[str, str, str]]) -> Iterator[tuple[int, dict]]:
  # utf-8-sig: spreadsheet programs often start the file with a byte order mark, which would otherwise
  # become part of the first column's name.
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.DictReader(f)
    try:
      header = reader.fieldnames
      if not header:
        raise DataError(f"{where} is empty; a CSV file needs a header row naming its columns "
                        f"({', '.join(column for _, column, _ in fields)}).")
      for key, column, _ in fields:
        if column not in header:
          raise DataError(f"{where} has no column {column!r} ({key}); its header row has "
                          f"{', '.join(map(repr, header))}. Set {key} to the right column or add a header row.")
      for record in reader:
        yield reader.line_num, record
    except csv.Error as e:
      raise DataError(f"{where}, line {reader.line_num}: not valid CSV ({e}).") from e


def _jsonl_records(where: str, path: str, fields: list[tuple[str, str, str]]) -> Iterator[tuple[int, dict]]:
  with open(path, encoding="utf-8-sig") as f:
    for line, text in enumerate(f, start=1):
      if not text.strip():
        continue
      try:
        record = json.loads(text)
      except json.JSONDecodeError as e:
        raise DataError(f"{where}, line {line}: not valid JSON ({e.msg}); each line must be one JSON "
                        "object.") from e
      if not isinstance(record, dict):
        raise DataError(f"{where}, line {line}: a JSON {type(record).__name__}, not an object; each line "
                        f"must be one JSON object with the keys {', '.join(repr(c) for _, c, _ in fields)}.")
      for key, column, _ in fields:
        if column not in record:
          raise DataError(f"{where}, line {line} has no key {column!r} ({key}); its keys are "
                          f"{', '.join(map(repr, record)) or 'none'}. Set {key} to the right key.")
      yield line, record
