"""Tests of the downstream task data: label-fraction subsets, the bbc tasks and the user's CSV / JSONL files."""

import collections
import csv
import hashlib
import json
import random
import re

import ml_collections
import numpy as np
import pytest

from lmlab.data import bbc_news
from lmlab.tasks import data

TASK_DEFAULTS = dict(name="bbc_topic", label_fraction=1.0, train_file="", validation_file="", test_file="",
                     validation_percent=10, test_percent=10, text_field="text", label_field="label",
                     source_field="source", target_field="target")


def _cfg(data_dir=None, seed=0, **task):
  cfg = ml_collections.ConfigDict()
  cfg.seed = seed
  cfg.data = ml_collections.ConfigDict(dict(
      source="tfds", tfds_name="bbc_news", tfds_data_dir=data_dir, tfds_download=False, tfds_manual_dir=None,
      text_key="text"))
  cfg.task = ml_collections.ConfigDict({**TASK_DEFAULTS, **task})
  return cfg


def _write_csv(path, header, rows):
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def _write_jsonl(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
  return str(path)


# subset_indices


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.33, 0.5, 0.9])
def test_subset_is_stratified(fraction):
  counts = {0: 200, 1: 51, 2: 7, 3: 3, 4: 1}
  labels = np.array([c for c, n in counts.items() for _ in range(n)])
  np.random.default_rng(1).shuffle(labels)
  idx = data.subset_indices(len(labels), fraction, seed=3, labels=labels)
  assert idx.dtype == np.int64
  assert np.all(np.diff(idx) > 0)  # sorted and unique
  assert idx.min() >= 0 and idx.max() < len(labels)
  got = collections.Counter(labels[idx].tolist())
  assert got == {c: max(1, round(fraction * n)) for c, n in counts.items()}


def test_subset_without_labels_has_the_right_size():
  for n, fraction in [(1000, 0.1), (7, 0.01), (10, 0.55)]:
    idx = data.subset_indices(n, fraction, seed=0)
    assert len(idx) == max(1, round(fraction * n)) and len(set(idx.tolist())) == len(idx)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n


def test_subset_is_deterministic_and_depends_on_seed():
  labels = np.arange(500) % 4
  a = data.subset_indices(500, 0.2, seed=7, labels=labels)
  np.testing.assert_array_equal(a, data.subset_indices(500, 0.2, seed=7, labels=labels.copy()))
  assert not np.array_equal(a, data.subset_indices(500, 0.2, seed=8, labels=labels))
  assert not np.array_equal(data.subset_indices(500, 0.2, seed=7), data.subset_indices(500, 0.2, seed=8))


def test_subset_fraction_one_keeps_all():
  labels = np.array([0, 0, 1, 2, 2, 2])
  np.testing.assert_array_equal(data.subset_indices(6, 1.0, seed=0, labels=labels), np.arange(6))
  np.testing.assert_array_equal(data.subset_indices(9, 1.0, seed=5), np.arange(9))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_subset_rejects_bad_fraction(fraction):
  with pytest.raises(ValueError, match="fraction"):
    data.subset_indices(10, fraction, seed=0)


# bbc_topic and bbc_headline


@pytest.fixture(scope="module")
def bbc_topic(bbc_data_dir):
  return data.load_task(_cfg(bbc_data_dir, name="bbc_topic"))


def test_bbc_topic_splits(bbc_topic):
  task = bbc_topic
  assert task.kind == "classification" and task.label_names == bbc_news.TOPICS
  splits = {"train": task.train, "validation": task.validation, "test": task.test}
  assert sum(len(s) for s in splits.values()) == bbc_news.NUM_ARTICLES
  assert task.train_size_full == len(task.train)
  for name, split in splits.items():
    assert len(split) > 0 and split.targets is None, name
    assert split.labels.dtype == np.int32 and split.labels.shape == (len(split),)
    assert set(split.labels.tolist()) == set(range(5)), name
  texts = {name: set(s.texts) for name, s in splits.items()}
  assert not texts["train"] & texts["validation"]
  assert not texts["train"] & texts["test"]
  assert not texts["validation"] & texts["test"]
  # Labels belong to their texts: articles about a topic mention its words more than other articles do.
  tech = [t for t, y in zip(task.train.texts, task.train.labels) if task.label_names[y] == "tech"]
  other = [t for t, y in zip(task.train.texts, task.train.labels) if task.label_names[y] != "tech"]
  rate = lambda docs: np.mean(["technology" in t.lower() or "computer" in t.lower() for t in docs])
  assert rate(tech) > 2 * rate(other)


def test_bbc_topic_label_fraction(bbc_data_dir, bbc_topic):
  task = data.load_task(_cfg(bbc_data_dir, name="bbc_topic", label_fraction=0.1))
  full = bbc_topic
  assert task.train_size_full == len(full.train)
  assert abs(len(task.train) - 0.1 * len(full.train)) <= 3  # per-class rounding
  full_counts = collections.Counter(full.train.labels.tolist())
  got = collections.Counter(task.train.labels.tolist())
  assert got == {c: max(1, round(0.1 * n)) for c, n in full_counts.items()}
  # The subset holds real training examples with their own labels; validation and test are untouched.
  label_of = dict(zip(full.train.texts, full.train.labels.tolist()))
  assert all(label_of[t] == y for t, y in zip(task.train.texts, task.train.labels.tolist()))
  assert task.validation.texts == full.validation.texts and task.test.texts == full.test.texts
  other_seed = data.load_task(_cfg(bbc_data_dir, seed=1, name="bbc_topic", label_fraction=0.1))
  assert other_seed.train.texts != task.train.texts


def test_tfds_examples_are_read_once_into_the_data_cache(bbc_data_dir, bbc_topic, tmp_path, monkeypatch):
  """Reading a TFDS split imports TensorFlow (~10 s): the examples are kept in the data cache, and a later
  run gets the same ones without touching TFDS's records."""
  import tensorflow_datasets as tfds
  monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
  first = data.load_task(_cfg(bbc_data_dir, name="bbc_topic"))  # read from TFDS into the empty cache
  assert len(list((tmp_path / "examples").iterdir())) == 3  # one file per split
  monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", lambda *a, **k: pytest.fail("read TFDS again"))
  again = data.load_task(_cfg(bbc_data_dir, name="bbc_topic"))
  for name in ("train", "validation", "test"):
    a, b, reference = getattr(again, name), getattr(first, name), getattr(bbc_topic, name)
    assert a.texts == b.texts == reference.texts
    assert a.labels.dtype == np.int32 and (a.labels == b.labels).all() and (a.labels == reference.labels).all()


def test_bbc_headline(bbc_data_dir, bbc_topic):
  task = data.load_task(_cfg(bbc_data_dir, name="bbc_headline"))
  assert task.kind == "generation" and task.label_names == ()
  articles = bbc_topic.train.texts + bbc_topic.validation.texts + bbc_topic.test.texts
  # (headline, body) of every article: the source is the article minus its first line.
  pairs = {(a.split("\n", 1)[0].strip(), a.split("\n", 1)[1].strip()) for a in articles}
  for split in (task.train, task.validation, task.test):
    assert len(split) > 0 and split.labels is None and len(split.targets) == len(split.texts)
    for source, target in zip(split.texts, split.targets):
      assert target and source and target == target.strip()
      assert source.split("\n")[0].strip() != target
      assert not source.startswith(target)
      assert (target, source) in pairs
  assert task.train_size_full == len(task.train) == len(bbc_topic.train)


def test_headline_source_drops_repeated_headline_and_empty_body():
  cfg = _cfg().data
  assert data._headline_source(cfg, "Title\nTitle\n\nBody text.\nMore.", "Title") == "Body text.\nMore."
  assert data._headline_source(cfg, "Title", "Title") == ""
  with pytest.raises(ValueError, match="not its title"):
    data._headline_source(cfg, "Other\nBody", "Title")


# The user's files


def test_csv_classification_with_given_files(tmp_path):
  header = ["id", "text", "label"]
  train = _write_csv(tmp_path / "train.csv", header, [
      [1, 'He said "hi", then left.\nSecond line.', "pos"], [2, "bad day", "neg"], [3, "fine", " pos "],
      [4, "meh", "neutral"]])
  val = _write_csv(tmp_path / "val.csv", header, [[5, "great", "pos"], [6, "awful", "neg"]])
  test = _write_csv(tmp_path / "test.csv", header, [[7, "ok", "neutral"]])
  task = data.load_task(_cfg(name="classification_file", train_file=train, validation_file=val, test_file=test))
  assert task.kind == "classification" and task.label_names == ("neg", "neutral", "pos")
  assert task.train.texts == ['He said "hi", then left.\nSecond line.', "bad day", "fine", "meh"]
  names = lambda split: [task.label_names[i] for i in split.labels]
  assert names(task.train) == ["pos", "neg", "pos", "neutral"]
  assert names(task.validation) == ["pos", "neg"] and task.validation.texts == ["great", "awful"]
  assert names(task.test) == ["neutral"] and task.test.texts == ["ok"]
  assert task.train.labels.dtype == np.int32 and task.train.targets is None and task.train_size_full == 4


def test_jsonl_generation_with_given_files(tmp_path):
  train = _write_jsonl(tmp_path / "train.jsonl", [
      {"src": "Translate: cat", "tgt": "chat", "extra": 1}, "", {"src": "Translate: dog", "tgt": "chien"}, "  "])
  val = _write_jsonl(tmp_path / "val.jsonl", [{"src": "Translate: bird", "tgt": "oiseau"}])
  test = _write_jsonl(tmp_path / "test.jsonl", [{"src": "Ünïcode ✓", "tgt": "ok"}])
  task = data.load_task(_cfg(name="generation_file", train_file=train, validation_file=val, test_file=test,
                             source_field="src", target_field="tgt"))
  assert task.kind == "generation" and task.label_names == ()
  assert task.train.texts == ["Translate: cat", "Translate: dog"] and task.train.targets == ["chat", "chien"]
  assert task.validation.targets == ["oiseau"] and task.test.texts == ["Ünïcode ✓"]
  assert task.train.labels is None


def _hash_rows(n=400, seed=0):
  """Rows with three labels; every 10th text appears three times."""
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    text = f"document number {i} about {rng.choice(['cats', 'dogs', 'birds'])}"
    rows += [(text, ["a", "b", "c"][i % 3])] * (3 if i % 10 == 0 else 1)
  return rows


def _pairs(split, label_names):
  return collections.Counter(zip(split.texts, [label_names[i] for i in split.labels]))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_hash_split(tmp_path, fmt):
  rows = _hash_rows()
  shuffled = rows[:]
  random.Random(1).shuffle(shuffled)

  def load(name, rows):
    if fmt == "csv":
      path = _write_csv(tmp_path / f"{name}.csv", ["text", "label"], rows)
    else:
      path = _write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t, "label": y} for t, y in rows])
    return data.load_task(_cfg(name="classification_file", train_file=path, validation_percent=20,
                               test_percent=15))

  task, again = load("ordered", rows), load("shuffled", shuffled)
  splits = {"train": task.train, "validation": task.validation, "test": task.test}
  assert sum(len(s) for s in splits.values()) == len(rows) == task.train_size_full + len(task.validation) + len(
      task.test)
  # Shares follow the percents (400 distinct texts: loose bounds).
  assert 0.12 < len(task.validation) / len(rows) < 0.28 and 0.08 < len(task.test) / len(rows) < 0.22
  # Identical texts land in one split.
  where = {}
  for name, split in splits.items():
    for text in split.texts:
      assert where.setdefault(text, name) == name, text
  # The documented rule: md5 bucket of the text.
  for text, name in where.items():
    bucket = int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % 100
    assert name == ("validation" if bucket < 20 else "test" if bucket < 35 else "train")
  # Shuffling the file changes the order within splits, not their contents.
  for name in splits:
    assert _pairs(splits[name], task.label_names) == _pairs(getattr(again, name), again.label_names), name


def test_hash_split_only_carves_splits_not_given(tmp_path):
  rows = _hash_rows(200)
  train = _write_csv(tmp_path / "train.csv", ["text", "label"], rows)
  val = _write_csv(tmp_path / "val.csv", ["text", "label"], [("given validation", "a")])
  carved = data.load_task(_cfg(name="classification_file", train_file=train, validation_percent=20,
                               test_percent=15))
  task = data.load_task(_cfg(name="classification_file", train_file=train, validation_file=val,
                             validation_percent=20, test_percent=15))
  assert task.validation.texts == ["given validation"]
  assert task.test.texts == carved.test.texts  # the test range does not move
  assert sorted(task.train.texts) == sorted(carved.train.texts + carved.validation.texts)


def test_file_label_fraction_is_stratified(tmp_path):
  rows = [(f"text {i}", "rare" if i % 20 == 0 else "common") for i in range(400)]
  train = _write_csv(tmp_path / "train.csv", ["text", "label"], rows)
  task = data.load_task(_cfg(name="classification_file", train_file=train, label_fraction=0.05))
  full = data.load_task(_cfg(name="classification_file", train_file=train))
  assert task.train_size_full == len(full.train)
  counts = collections.Counter(full.label_names[i] for i in full.train.labels)
  got = collections.Counter(task.label_names[i] for i in task.train.labels)
  assert got == {name: max(1, round(0.05 * n)) for name, n in counts.items()}
  assert set(task.train.texts) <= set(full.train.texts)
  gen = data.load_task(_cfg(name="generation_file", train_file=_write_csv(
      tmp_path / "gen.csv", ["source", "target"], [(f"s{i}", f"t{i}") for i in range(300)]), label_fraction=0.1))
  assert len(gen.train) == max(1, round(0.1 * gen.train_size_full))
  assert all(t == "t" + s[1:] for s, t in zip(gen.train.texts, gen.train.targets))  # pairs stay aligned


# Errors: one clear ValueError naming the key, file, column or line.


def _error(cfg):
  with pytest.raises(ValueError) as info:
    data.load_task(cfg)
  return str(info.value)


def test_error_unknown_task_and_bad_fraction():
  msg = _error(_cfg(name="sentiment"))
  assert "config.task.name" in msg and "'sentiment'" in msg and "bbc_topic" in msg and "generation_file" in msg
  for fraction in (0.0, 1.5):
    msg = _error(_cfg(name="classification_file", label_fraction=fraction))
    assert "config.task.label_fraction" in msg


def test_error_missing_files_and_extension(tmp_path):
  assert "config.task.train_file" in _error(_cfg(name="classification_file"))
  missing = str(tmp_path / "nope.csv")
  msg = _error(_cfg(name="classification_file", train_file=missing))
  assert "config.task.train_file" in msg and missing in msg and "does not exist" in msg
  train = _write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "x"), ("b", "y")])
  msg = _error(_cfg(name="classification_file", train_file=train, test_file=str(tmp_path / "t.jsonl")))
  assert "config.task.test_file" in msg and "t.jsonl" in msg
  (tmp_path / "train.txt").write_text("text,label\na,x\n")
  msg = _error(_cfg(name="classification_file", train_file=str(tmp_path / "train.txt")))
  assert "config.task.train_file" in msg and ".txt" in msg and ".csv" in msg and ".jsonl" in msg


def test_error_missing_column(tmp_path):
  train = _write_csv(tmp_path / "train.csv", ["sentence", "y"], [("a", "x")])
  msg = _error(_cfg(name="classification_file", train_file=train))
  assert "'text'" in msg and "config.task.text_field" in msg and "'sentence'" in msg and "'y'" in msg
  msg = _error(_cfg(name="classification_file", train_file=train, text_field="sentence"))
  assert "'label'" in msg and "config.task.label_field" in msg
  train = _write_jsonl(tmp_path / "train.jsonl", [{"source": "a", "target": "b"}, {"source": "c", "tgt": "d"}])
  msg = _error(_cfg(name="generation_file", train_file=train))
  assert "line 2" in msg and "'target'" in msg and "config.task.target_field" in msg and "'tgt'" in msg
  (tmp_path / "empty.csv").write_text("")
  msg = _error(_cfg(name="classification_file", train_file=str(tmp_path / "empty.csv")))
  assert "empty.csv" in msg and "header row" in msg


def test_error_empty_values(tmp_path):
  train = _write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "x"), ("  ", "y"), ("c", "y")])
  msg = _error(_cfg(name="classification_file", train_file=train))
  assert "train.csv" in msg and "line 3" in msg and "text" in msg and "empty" in msg
  train = _write_csv(tmp_path / "train2.csv", ["text", "label"], [("a", "x"), ("b", "")])
  assert "line 3" in _error(_cfg(name="classification_file", train_file=train))
  train = _write_jsonl(tmp_path / "train.jsonl", [{"source": "a", "target": "b"}, "", {"source": "c",
                                                                                          "target": None}])
  msg = _error(_cfg(name="generation_file", train_file=train))
  assert "train.jsonl" in msg and "line 3" in msg and "target" in msg and "empty" in msg


def test_error_bad_jsonl_lines(tmp_path):
  for i, bad in enumerate(['["a", "b"]', '{"source": "a", ', '"just a string"']):
    train = _write_jsonl(tmp_path / f"train{i}.jsonl", [{"source": "a", "target": "b"}, bad])
    msg = _error(_cfg(name="generation_file", train_file=train))
    assert f"train{i}.jsonl" in msg and "line 2" in msg and "JSON" in msg, msg


def test_error_unseen_label(tmp_path):
  train = _write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "x"), ("b", "y")])
  val = _write_csv(tmp_path / "val.csv", ["text", "label"], [("c", "x"), ("d", "zebra")])
  test = _write_csv(tmp_path / "test.csv", ["text", "label"], [("e", "y")])
  msg = _error(_cfg(name="classification_file", train_file=train, validation_file=val, test_file=test))
  assert "'zebra'" in msg and "validation" in msg and "val.csv" in msg and "line 3" in msg


def test_error_empty_splits(tmp_path):
  rows = [(f"text {i}", "ab"[i % 2]) for i in range(50)]
  train = _write_csv(tmp_path / "train.csv", ["text", "label"], rows)
  msg = _error(_cfg(name="classification_file", train_file=train, validation_percent=0))
  assert re.search(r"validation split is empty", msg) and "config.task.validation_percent" in msg
  assert "config.task.validation_file" in msg
  msg = _error(_cfg(name="classification_file", train_file=train, validation_percent=50, test_percent=50))
  assert "train split is empty" in msg
  val = _write_csv(tmp_path / "val.csv", ["text", "label"], [])
  msg = _error(_cfg(name="classification_file", train_file=train, validation_file=val))
  assert "validation split is empty" in msg and "val.csv" in msg
  msg = _error(_cfg(name="classification_file", train_file=train, validation_percent=60, test_percent=50))
  assert "config.task.validation_percent" in msg and "100" in msg
