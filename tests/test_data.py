"""Tests of the data layer: the bbc_news builder, document sources, tokenizer, packing and batching."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from launching import ROOT
from lmlab import config
from lmlab.data import bbc_news, dedup, packing, pipeline, sources, tokenizer
from lmlab.data.documents import Documents
from lmlab.errors import ConfigError

TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def data_config(**overrides):
  cfg = config.default_config().data
  cfg.update(overrides)
  return cfg


# bbc_news


@pytest.fixture(scope="module")
def bbc_splits(bbc_data_dir):
  """{split: list of numpy examples}."""
  ds = tfds.load("bbc_news", data_dir=bbc_data_dir, download=False)
  return {name: list(tfds.as_numpy(split)) for name, split in ds.items()}


def test_bbc_news_is_registered():
  assert "bbc_news" in tfds.list_builders()


def test_bbc_news_sizes_and_labels(bbc_data_dir, bbc_splits):
  sizes = {name: len(examples) for name, examples in bbc_splits.items()}
  assert sum(sizes.values()) == 2225
  assert sorted(sizes) == ["test", "train", "validation"]
  assert 0.75 < sizes["train"] / 2225 < 0.85
  assert 0.07 < sizes["validation"] / 2225 < 0.13
  assert 0.07 < sizes["test"] / 2225 < 0.13
  info = tfds.builder("bbc_news", data_dir=bbc_data_dir).info
  assert info.features["label"].names == TOPICS
  assert info.supervised_keys == ("text", "label")
  for name, examples in bbc_splits.items():
    counts = collections.Counter(int(ex["label"]) for ex in examples)
    assert sorted(counts) == [0, 1, 2, 3, 4], name
    # Each topic holds 386-511 articles, so it has ~300-400 train and ~40-50 eval articles.
    assert min(counts.values()) >= 0.5 * sizes[name] / 10, (name, counts)


def test_bbc_news_text_and_title(bbc_splits):
  examples = [ex for split in bbc_splits.values() for ex in split]
  for ex in examples:
    text, title = ex["text"].decode("utf-8"), ex["title"].decode("utf-8")
    assert title and title == text.split("\n")[0]
    assert text == text.strip() and "\r" not in text
  texts = [ex["text"].decode("utf-8") for ex in examples]
  # sports/199.txt is latin-1: its pound sign must decode, not become a replacement character.
  assert any("a \u00a315.8m signing from Parma" in t for t in texts)
  assert not any("\ufffd" in t for t in texts)


def test_bbc_news_duplicates_share_a_split(bbc_splits):
  """The corpus has byte-identical articles under two names; they must not leak from train into eval."""
  texts = {name: {ex["text"] for ex in examples} for name, examples in bbc_splits.items()}
  assert not texts["train"] & texts["validation"]
  assert not texts["train"] & texts["test"]
  assert not texts["validation"] & texts["test"]


def test_bbc_news_split_rule():
  assert bbc_news.split_of("business/001.txt") == bbc_news.split_of("business/001.txt")
  counts = collections.Counter(bbc_news.split_of(f"tech/{i:03d}.txt") for i in range(1000))
  assert 700 < counts["train"] < 900 and 50 < counts["validation"] < 150


# load_documents: TFDS


def test_tfds_documents_shards(bbc_data_dir):
  cfg = data_config(tfds_data_dir=bbc_data_dir)
  full = sources.load_documents(cfg, "train")
  assert len(full) > 1700 and all(isinstance(d, str) and d for d in full)
  shards = [list(sources.iter_documents(cfg, "train", i, 3)) for i in range(3)]
  assert shards[0] + shards[1] + shards[2] == full  # read in turn: the split, in order
  assert abs(len(shards[0]) - len(shards[2])) <= 1
  evaluation = sources.load_documents(cfg, "validation")
  assert not set(evaluation) & set(full)


def test_tfds_other_text_key(bbc_data_dir):
  cfg = data_config(tfds_data_dir=bbc_data_dir, text_key="title")
  titles = sources.load_documents(cfg, "test")
  assert all("\n" not in t for t in titles)


def test_tfds_unprepared_catalog_dataset_fails_without_trying_to_download(tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise AssertionError("offline, a download retries for minutes: it must not be attempted")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
  cfg = data_config(tfds_name="imdb_reviews", tfds_data_dir=str(tmp_path / "empty"))
  with pytest.raises(ValueError) as e:
    sources.load_documents(cfg, "train")
  message = str(e.value)
  assert "not prepared" in message and str(tmp_path / "empty") in message
  assert "tfds_manual_dir" in message and "tfds_download=True" in message


@pytest.mark.parametrize("overrides, split, key", [
    (dict(tfds_name="bbc_newz"), "train", "config.data.tfds_name"),
    (dict(text_key="body"), "train", "config.data.text_key"),
    (dict(text_key="label"), "train", "config.data.text_key"),
    (dict(train_split="trian"), "trian", "config.data.train_split"),
    (dict(eval_split="valid"), "valid", "config.data.eval_split"),
])
def test_tfds_config_errors(bbc_data_dir, overrides, split, key):
  cfg = data_config(tfds_data_dir=bbc_data_dir, **overrides)
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    sources.load_documents(cfg, split)


# load_documents: text files


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
  """40 files of 3 paragraphs of 2 lines (one latin-1 file, one with CRLF); returns (glob, lines)."""
  root = tmp_path_factory.mktemp("corpus")
  (root / "sub").mkdir()
  (root / "notes.md").write_text("not matched")
  lines = []
  for f in range(40):
    paragraphs = []
    for p in range(3):
      pair = [f"file {f} paragraph {p} line {i} caf\u00e9" for i in range(2)]
      lines += pair
      paragraphs.append("\n".join(pair))
    text = "\n\n  \n".join(paragraphs) + "\n\n"
    path = root / ("sub" if f % 2 else ".") / f"doc{f:02d}.txt"
    if f == 3:
      path.write_bytes(text.encode("latin-1"))
    elif f == 4:
      path.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    else:
      path.write_text(text, encoding="utf-8")
  return str(root / "**" / "*.txt"), lines


@pytest.mark.parametrize("unit, count", [("file", 40), ("paragraph", 120), ("line", 240)])
def test_text_file_documents(text_corpus, unit, count):
  pattern, lines = text_corpus
  cfg = data_config(source="text_files", text_glob=pattern, text_unit=unit, text_eval_percent=25)
  train = sources.load_documents(cfg, "train")
  evaluation = sources.load_documents(cfg, "validation")
  docs = train + evaluation
  assert len(docs) == count
  assert all(d == d.strip() and d for d in docs)
  # Every line of the corpus, decoded (latin-1 and CRLF files too), is in exactly one document.
  assert sorted(line for d in docs for line in d.split("\n") if line.strip()) == sorted(lines)
  assert 0.1 * count <= len(evaluation) <= 0.4 * count
  assert sources.load_documents(cfg, "train") == train  # deterministic
  shards = [list(sources.iter_documents(cfg, "train", i, 3)) for i in range(3)]
  assert shards[0] + shards[1] + shards[2] == train and all(shards)  # whole files, in order


def test_text_files_never_import_tfds(text_corpus):
  """The training path on text files (launch.py, the train loop, reading and checking the documents) loads
  neither TFDS nor TensorFlow; the first TFDS call imports TFDS with lmlab's builders registered."""
  code = (f"import sys; sys.path.insert(0, {ROOT!r}); import launch; from lmlab.train import loop; "
          "from lmlab import config; from lmlab.data import sources; "
          "cfg = config.default_config().data; cfg.update(source='text_files', text_glob=sys.argv[1]); "
          "sources.check(cfg); assert sources.load_documents(cfg, 'train'); "
          "print(sorted({'tensorflow', 'tensorflow_datasets'} & set(sys.modules))); "
          "print(sources.is_text_feature({}, 'text'), 'lmlab.data.bbc_news' in sys.modules)")
  proc = subprocess.run([sys.executable, "-c", code, text_corpus[0]], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split("\n")[:2] == ["[]", "False True"]


def test_text_file_errors(text_corpus, tmp_path):
  pattern, _ = text_corpus
  cfg = data_config(source="text_files", text_glob=pattern)
  with pytest.raises(ValueError, match=r"config\.data\.train_split"):
    sources.load_documents(cfg, "test")
  cfg = data_config(source="text_files", text_glob=str(tmp_path / "*.txt"))
  with pytest.raises(ValueError, match=r"config\.data\.text_glob"):
    sources.load_documents(cfg, "train")


# tokenizer


def tokenizer_config(vocab_size=300, model_type="unigram", num_sentinels=100):
  cfg = config.default_config().tokenizer
  cfg.vocab_size, cfg.model_type, cfg.num_sentinels = vocab_size, model_type, num_sentinels
  return cfg


@pytest.fixture(scope="module")
def small_docs(bbc_data_dir):
  return sources.load_documents(data_config(tfds_data_dir=bbc_data_dir), "train")[:300]


@pytest.fixture(scope="module")
def small_tokenizer(small_docs, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
  tokenizer.train(path, small_docs, tokenizer_config())
  return path, tokenizer.load(path, tokenizer_config())


def test_tokenizer_round_trip(small_tokenizer):
  path, sp = small_tokenizer
  assert sp.get_piece_size() == 300
  assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
  assert (tokenizer.PAD_ID, tokenizer.UNK_ID, tokenizer.BOS_ID, tokenizer.EOS_ID) == (0, 1, 2, 3)
  text = "The government said shares in the company rose by 5% to $1.2bn on Tuesday."
  assert sp.decode(sp.encode(text)) == text
  # The reserved pieces sit at fixed ids, and their strings in text encode to them.
  assert [sp.id_to_piece(i) for i in (4, 5, 6, 7, 106)] == ["[CLS]", "[SEP]", "[MASK]", "<extra_id_0>",
                                                            "<extra_id_99>"]
  ids = sp.encode("Shares [MASK] sharply<extra_id_3>")
  assert tokenizer.MASK_ID in ids and tokenizer.FIRST_SENTINEL_ID + 3 in ids
  assert tokenizer.num_special_ids(100) == 107
  assert os.listdir(os.path.dirname(path)) == ["tokenizer.model"]  # no temp file left behind


def test_tokenizer_reloads_and_checks_the_config(small_tokenizer, tmp_path):
  path, sp = small_tokenizer
  again = tokenizer.load(path, tokenizer_config())
  assert again.serialized_model_proto() == sp.serialized_model_proto()
  with pytest.raises(ValueError, match=r"config\.tokenizer\.vocab_size.*new workdir"):
    tokenizer.load(path, tokenizer_config(vocab_size=512))
  with pytest.raises(ValueError, match=r"num_sentinels = 10 .*new workdir"):
    tokenizer.load(path, tokenizer_config(num_sentinels=10))
  with pytest.raises(ValueError, match="does not exist"):
    tokenizer.load(str(tmp_path / "missing.model"), tokenizer_config())


def test_tokenizer_vocab_too_large(small_docs, tmp_path):
  with pytest.raises(ValueError, match=r"config\.tokenizer\.vocab_size"):
    tokenizer.train(str(tmp_path / "t.model"), small_docs[:20], tokenizer_config(20000))
  assert not os.listdir(tmp_path)


def test_tokenizer_long_lines_reach_the_trainer(tmp_path):
  line = " ".join(f"w{i % 50}x" for i in range(2500))  # ~10 kB; sentencepiece drops lines > 4,192 bytes.
  pieces = list(tokenizer.training_lines([line, "", "short line"]))
  assert all(len(p.encode("utf-8")) < tokenizer.MAX_PIECE_BYTES for p in pieces)
  assert " ".join(pieces[:-1]) == line and pieces[-1] == "short line"
  # Trained on the long line alone: without the split, sentencepiece would see no sentence at all.
  tokenizer.train(str(tmp_path / "t.model"), [line], tokenizer_config(21, num_sentinels=0))
  sp = tokenizer.load(str(tmp_path / "t.model"), tokenizer_config(21, num_sentinels=0))
  assert tokenizer.UNK_ID not in sp.encode("w7x w49x")
  assert len(list(tokenizer.training_lines(["y" * 5000]))) == 6  # a single overlong word is cut too


def test_encode_documents(small_tokenizer):
  _, sp = small_tokenizer
  docs = ["Shares rose.", "", "The minister said."]
  encoded = tokenizer.encode_documents(sp, docs)
  assert [e.dtype for e in encoded] == [np.int32] * 3
  for doc, ids in zip(docs, encoded):
    assert ids[0] == tokenizer.BOS_ID and ids[-1] == tokenizer.EOS_ID
    assert sp.decode(ids[1:-1].tolist()) == doc


# packing


def pack_reference(docs, seq_len):
  """Token-by-token packing, the obvious way."""
  stream = [(token, d) for d, doc in enumerate(docs) for token in doc]
  packed = {key: [] for key in packing.KEYS}
  for start in range(0, len(stream), seq_len):
    row = {key: [0] * seq_len for key in packing.KEYS}
    segment, position, last_doc = 0, 0, None
    for i, (token, doc) in enumerate(stream[start:start + seq_len]):
      if doc != last_doc:
        segment, position, last_doc = segment + 1, 0, doc
      row["tokens"][i], row["segment_ids"][i], row["positions"][i] = token, segment, position
      position += 1
    for key in packing.KEYS:
      packed[key].append(row[key])
  return {key: np.array(rows, np.int32).reshape(-1, seq_len) for key, rows in packed.items()}


@pytest.mark.parametrize("seq_len", [1, 7, 16])
def test_pack_documents_matches_reference(seq_len):
  rng = np.random.default_rng(seq_len)
  lengths = [5, 16, 1, 0, 33, 7, 2, 16, 9]
  docs = [rng.integers(4, 100, size=n).astype(np.int32) for n in lengths]
  packed = packing.pack_documents(docs, seq_len)
  expected = pack_reference(docs, seq_len)
  for key in packing.KEYS:
    assert packed[key].dtype == np.int32 and packed[key].shape == expected[key].shape
    np.testing.assert_array_equal(packed[key], expected[key], err_msg=key)


def test_pack_documents_semantics():
  rng = np.random.default_rng(0)
  docs = [rng.integers(4, 1000, size=n).astype(np.int32) for n in rng.integers(1, 60, size=200)]
  seq_len = 32
  packed = packing.pack_documents(docs, seq_len)
  tokens, segments, positions = packed["tokens"], packed["segment_ids"], packed["positions"]
  total = sum(len(d) for d in docs)
  assert np.count_nonzero(packed["segment_ids"]) == total
  assert tokens.shape == (-(-total // seq_len), seq_len)
  # Every token of every document, in order; padding only at the end of the last row.
  np.testing.assert_array_equal(tokens[segments > 0], np.concatenate(docs))
  assert (segments[:-1] > 0).all()
  last = segments[-1]
  assert (np.diff((last > 0).astype(int)) <= 0).all()
  assert (tokens[-1][last == 0] == 0).all() and (positions[-1][last == 0] == 0).all()
  # Segments count up by one from 1 in each row; positions restart exactly where a segment starts.
  assert (segments[:, 0] == 1).all()
  step = np.diff(segments, axis=1)
  real = segments[:, 1:] > 0
  assert np.isin(step[real], [0, 1]).all()
  starts = np.concatenate([np.ones((len(segments), 1), bool), step != 0], axis=1) & (segments > 0)
  assert (positions[starts] == 0).all()
  following = (~starts[:, 1:]) & real
  assert (positions[:, 1:][following] == positions[:, :-1][following] + 1).all()


# batching


def row_packed(num_rows, seq_len=4):
  """Row r has tokens r, r, ... so batches show which rows they hold."""
  tokens = np.repeat(np.arange(num_rows, dtype=np.int32)[:, None], seq_len, axis=1)
  return {"tokens": tokens, "segment_ids": np.ones_like(tokens),
          "positions": np.tile(np.arange(seq_len, dtype=np.int32), (num_rows, 1))}


def take(ds, n):
  """The row ids of the first n batches, [n, B]."""
  return np.stack([b["tokens"][:, 0] for _, b in zip(range(n), ds)])


def test_train_batches_shapes():
  batch = next(pipeline.train_batches(row_packed(10, 8), batch_size=3, seed=0))
  assert sorted(batch) == sorted(packing.KEYS)
  for key in packing.KEYS:
    assert batch[key].shape == (3, 8) and batch[key].dtype == np.int32


def test_train_batches_order_is_a_function_of_seed_step_process():
  packed = row_packed(37)
  first = take(pipeline.train_batches(packed, 5, seed=1), 30)
  np.testing.assert_array_equal(first, take(pipeline.train_batches(packed, 5, seed=1), 30))
  assert not np.array_equal(first, take(pipeline.train_batches(packed, 5, seed=2), 30))
  assert not np.array_equal(first, take(pipeline.train_batches(packed, 5, seed=1, process_index=1), 30))
  for k in (1, 7, 22):
    resumed = take(pipeline.train_batches(packed, 5, seed=1, start_step=k), 30 - k)
    np.testing.assert_array_equal(resumed, first[k:])


def test_train_batches_visits_every_row_once_per_epoch():
  num_rows, batch_size = 37, 5
  ids = take(pipeline.train_batches(row_packed(num_rows), batch_size, seed=3), -(-3 * num_rows // batch_size))
  ids = ids.reshape(-1)
  epochs = [ids[e * num_rows:(e + 1) * num_rows] for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(num_rows))
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
  assert not np.array_equal(epochs[0], np.arange(num_rows))


def test_eval_batches_pad_with_zero_rows():
  packed = row_packed(10)
  packed["tokens"] = packed["tokens"] + 4
  batches = list(pipeline.EvalBatches(packed, 4))
  assert len(batches) == 3
  for key in packing.KEYS:
    stacked = np.concatenate([b[key] for b in batches])
    assert stacked.shape == (12, 4) and stacked.dtype == np.int32
    np.testing.assert_array_equal(stacked[:10], packed[key])
    assert (stacked[10:] == 0).all()
  with pytest.raises(IndexError):
    pipeline.EvalBatches(packed, 4)[3]


def test_transform_is_seeded_by_step_and_resumes():
  packed = row_packed(40, 8)

  def noisy(batch, rng):  # any objective transform: output depends on the rng
    return {"tokens": batch["tokens"] + rng.integers(0, 1000, batch["tokens"].shape).astype(np.int32)}

  stream = lambda **kw: [b["tokens"] for _, b in zip(range(6), pipeline.train_batches(
      packed, 5, seed=1, transform=noisy, **kw))]
  first = stream()
  np.testing.assert_array_equal(first, stream())
  np.testing.assert_array_equal(first[2:], stream(start_step=2)[:4])  # resuming sees the same noise
  assert not np.array_equal(first, stream(process_index=1))
  # Evaluation batches get a fixed rng per batch index: every evaluation sees the same masks.
  evals = [[b["tokens"] for b in pipeline.EvalBatches(packed, 5, transform=noisy, seed=1)] for _ in range(2)]
  np.testing.assert_array_equal(evals[0], evals[1])


# dedup: near-duplicate evaluation documents


def test_shingles_stay_inside_documents():
  hashes, docs = dedup.shingles([np.arange(5), np.arange(5, 9), np.arange(2)], n=3)
  assert docs.tolist() == [0, 0, 0, 1, 1]  # 3 windows of the first, 2 of the second, none of the third
  again, _ = dedup.shingles([np.arange(5, 9)], n=3)
  assert hashes[3:].tolist() == again.tolist() and len(set(hashes.tolist())) == 5
  assert dedup.shingles([np.array([1, 2])], n=3)[0].size == 0


def test_containment_and_the_near_duplicate_cut():
  rng = np.random.default_rng(0)
  train = [rng.integers(0, 1000, 60) for _ in range(3)]
  copy = train[1].copy()
  half = np.concatenate([train[2][:30], rng.integers(1000, 2000, 30)])  # new tokens: never in train
  edited = train[0].copy()
  edited[30] = 5000  # one changed token spoils the 8 shingles that cover it
  new = rng.integers(1000, 2000, 60)
  evaluated = [copy, half, edited, new, np.array([1, 2, 3])]
  share = dedup.containment(train, evaluated, n=8)
  np.testing.assert_allclose(share, [1.0, 23 / 53, 45 / 53, 0.0, 0.0])
  kept, share_again = dedup.without_near_duplicates(Documents.from_list(train), Documents.from_list(evaluated), 0.5)
  np.testing.assert_allclose(share_again, share)
  assert [d.tolist() for d in kept] == [half.tolist(), new.tolist(), [1, 2, 3]]  # in order; short ones kept


def test_eval_dedup_is_checked_before_running():
  cfg = config.default_config()
  cfg.data.eval_dedup = 1.5
  with pytest.raises(ConfigError, match="eval_dedup = 1.5 must be in"):
    config.validate(cfg, 1)
  cfg.data.eval_dedup = 0.5
  config.validate(cfg, 1)
  with pytest.raises(ConfigError, match="one process"):
    config.validate(cfg, 2, process_count=2)
