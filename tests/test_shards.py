"""Token shards and the data cache: prepared once, read back as exactly the batches of the in-memory
path, resumable, checked, shared by concurrent preparers."""

import concurrent.futures
import itertools
import os

import numpy as np
import pytest
import sentencepiece

from lmlab import config as config_lib
from lmlab import objectives
from lmlab.data import cache, packing, pipeline, shards, sources, tokenizer
from lmlab.errors import DataError
from lmlab.objectives import masked, span

SEQ_LEN, BATCH = 32, 8


def write_corpus(directory, files=5, paragraphs=60, seed=0):
  """Plain-text files of blank-line separated paragraphs of pseudo-words (varied lengths, some long)."""
  rng = np.random.default_rng(seed)
  words = ["".join(rng.choice(list("abcdefghij"), rng.integers(2, 7))) for _ in range(300)]
  os.makedirs(directory, exist_ok=True)
  for f in range(files):
    paras = [" ".join(rng.choice(words, rng.integers(3, 120))) for _ in range(paragraphs)]
    with open(os.path.join(directory, f"part-{f}.txt"), "w") as out:
      out.write("\n\n".join(paras))


def corpus_config(tmp_path, **changes):
  cfg = config_lib.default_config()
  cfg.data.source, cfg.data.text_unit = "text_files", "paragraph"
  cfg.data.text_glob = str(tmp_path / "corpus" / "*.txt")
  cfg.data.cache_dir = str(tmp_path / "cache")
  cfg.data.seq_len, cfg.data.batch_size = SEQ_LEN, BATCH
  cfg.tokenizer.vocab_size, cfg.tokenizer.num_sentinels = 200, 10
  for key, value in changes.items():
    config_lib.set_by_path(cfg, key, value)
  return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """(tmp dir with corpus/, the tokenizer path) for a 3-shard preparation."""
  tmp_path = tmp_path_factory.mktemp("shards")
  write_corpus(tmp_path / "corpus")
  cfg = corpus_config(tmp_path, **{"data.num_shards": 3})
  return tmp_path, cache.corpus_tokenizer(cfg, out=lambda line: None)


def in_memory_docs(cfg, split, tokenizer_path):
  sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer_path)
  return tokenizer.encode_documents(sp, sources.load_documents(cfg.data, split))


def in_memory_rows(name, docs, cfg):
  """The reference rows of an objective, packed from the whole list of documents at once."""
  if name == "mlm_nsp":
    return packing.Shuffled(packing.ArrayRows(masked.pair_rows(docs, cfg.data.seq_len)))
  length = cfg.data.seq_len
  if name == "span_corruption":
    length = span.span_corruption_lengths(length, cfg.objective.noise_density,
                                                     cfg.objective.mean_span_length)[0]
  return packing.ArrayRows(packing.pack_documents(docs, length))


@pytest.mark.parametrize("name", ["causal_lm", "mlm_nsp", "span_corruption"])
def test_shard_batches_equal_the_in_memory_path(corpus, name):
  tmp_path, tokenizer_path = corpus
  family = {"causal_lm": "decoder", "mlm_nsp": "encoder", "span_corruption": "encoder_decoder"}[name]
  cfg = corpus_config(tmp_path, **{"data.num_shards": 3, "objective.name": name, "model.family": family})
  data = objectives.get(name).data(cfg, cfg.tokenizer.vocab_size)
  spec = data.spec(BATCH)
  for split in (cfg.data.train_split, cfg.data.eval_split):
    docs, counts = shards.split_documents(cfg, split, tokenizer_path, out=lambda line: None)
    reference = in_memory_docs(cfg, split, tokenizer_path)
    assert counts["num_docs"] == len(reference) and counts["num_tokens"] == sum(map(len, reference))
    assert len(docs._tokens) == 3 and all(isinstance(t, np.memmap) for t in docs._tokens)  # mapped, not loaded
    ref_rows, rows = in_memory_rows(name, reference, cfg), data.rows(docs)
    assert rows.num_rows == ref_rows.num_rows > BATCH
    streams = [list(itertools.islice(pipeline.train_batches(r, BATCH, seed=3, transform=data.transform), 4))
               for r in (ref_rows, rows)]
    evals = [list(pipeline.EvalBatches(r, BATCH, data.transform, seed=3)) for r in (ref_rows, rows)]
    for got, want in zip(streams[1] + evals[1], streams[0] + evals[0]):
      assert sorted(got) == sorted(want)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for got in streams[1]:  # what the model's input shapes are built from
      assert {k: (v.shape, v.dtype) for k, v in got.items()} == {k: (s, np.dtype(d)) for k, (s, d) in spec.items()}


def test_resuming_on_shards_repeats_the_batches(corpus):
  tmp_path, tokenizer_path = corpus
  cfg = corpus_config(tmp_path, **{"data.num_shards": 3})
  docs, _ = shards.split_documents(cfg, cfg.data.train_split, tokenizer_path, out=lambda line: None)
  rows = packing.PackedRows(docs, SEQ_LEN)
  stream = lambda start: [b["tokens"] for b in itertools.islice(pipeline.train_batches(rows, BATCH, 5, start), 6)]
  whole = stream(0)
  np.testing.assert_array_equal(stream(4)[:2], whole[4:])
  assert not np.array_equal(whole[0], whole[1])


def test_each_process_maps_its_own_block_of_shards(corpus):
  tmp_path, tokenizer_path = corpus
  cfg = corpus_config(tmp_path, **{"data.num_shards": 3})
  tasks = shards.plan(cfg.data, cfg.data.train_split, tokenizer_path)
  blocks = [shards.process_block(tasks, p, 2) for p in range(2)]
  assert [t.index for block in blocks for t in block] == [0, 1, 2]  # contiguous, disjoint, complete
  whole, _ = shards.split_documents(cfg, cfg.data.train_split, tokenizer_path, out=lambda line: None)
  parts = [shards.split_documents(cfg, cfg.data.train_split, tokenizer_path, p, 2, out=lambda line: None)[0]
           for p in range(2)]
  assert [d.num_docs for d in parts] != [0, 0] and sum(d.num_docs for d in parts) == whole.num_docs
  for got, want in zip([doc for part in parts for doc in part], whole, strict=True):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(DataError, match="num_shards = 3 is less than the 4 processes"):
    shards.plan(cfg.data, cfg.data.train_split, tokenizer_path, process_count=4)


def test_a_damaged_or_missing_shard_is_one_clear_error(tmp_path, corpus):
  source, tokenizer_path = corpus
  cfg = corpus_config(source, **{"data.num_shards": 3, "data.cache_dir": str(tmp_path / "cache")})
  tasks = shards.plan(cfg.data, cfg.data.train_split, tokenizer_path)
  shards.prepare(tasks, out=lambda line: None)
  stem = tasks[1].stem
  with open(stem + ".tokens", "r+b") as f:  # one flipped byte: same size, wrong checksum
    first = f.read(1)
    f.seek(0)
    f.write(bytes([first[0] ^ 1]))
  with pytest.raises(DataError, match=r"00001-of-00003.tokens does not match its checksum .* delete .*00001-of-00003"):
    shards.open_shards(tasks)
  shards.open_shards(tasks, verify=False)  # sizes still agree: only the checksum finds it
  with open(stem + ".tokens", "r+b") as f:
    f.truncate(10)
  with pytest.raises(DataError, match=r"00001-of-00003.tokens has 10 bytes, not"):
    shards.open_shards(tasks, verify=False)
  os.unlink(stem + ".tokens")
  with pytest.raises(DataError, match=r"00001-of-00003.tokens is missing"):
    shards.open_shards(tasks)
  for ext in (".starts", ".json"):  # the shard deleted as the message says: prepared anew, the rest kept
    os.unlink(stem + ext)
  lines = []
  shards.prepare(tasks, out=lines.append)
  assert lines[0].startswith("Preparing 1 of 3") and shards.open_shards(tasks)[1]["num_docs"] > 0


def test_an_interrupted_preparation_resumes_at_the_unfinished_shards(tmp_path, corpus):
  source, tokenizer_path = corpus
  cfg = corpus_config(source, **{"data.num_shards": 3, "data.cache_dir": str(tmp_path / "cache")})
  tasks = shards.plan(cfg.data, cfg.data.train_split, tokenizer_path)
  shards.prepare_shard(tasks[0])
  # What a kill in the middle of shard 2 leaves: its temp files, no .json.
  for ext in ("tokens", "starts"):
    with open(os.path.join(tasks[1].directory, f".00001-dead.{ext}.tmp"), "wb") as f:
      f.write(b"partial")
  first = os.path.getmtime(tasks[0].stem + ".tokens")
  lines = []
  shards.prepare(tasks, out=lines.append)
  assert lines[0].startswith("Preparing 2 of 3") and os.path.getmtime(tasks[0].stem + ".tokens") == first
  assert not [name for name in os.listdir(tasks[1].directory) if name.endswith(".tmp")]
  reference = corpus_config(source, **{"data.num_shards": 3})  # the module's uninterrupted preparation
  for task, ref in zip(tasks, shards.plan(reference.data, reference.data.train_split, tokenizer_path)):
    assert shards.read_meta(task)["tokens_sha256"] == shards.read_meta(ref)["tokens_sha256"]


def _prepare_elsewhere(args):
  tmp_path, tokenizer_path = args
  cfg = corpus_config(tmp_path, **{"data.num_shards": 6})
  lines = []
  shards.prepare(shards.plan(cfg.data, cfg.data.train_split, tokenizer_path), out=lines.append)
  return [line for line in lines if line.startswith("  shard") and "meanwhile" not in line]


def test_concurrent_preparers_never_prepare_a_shard_twice(corpus):
  """Two preparers of one split at once (threads: each opens its own lock files, and flock locks belong
  to the open file, so they exclude each other as two processes or hosts would)."""
  tmp_path, tokenizer_path = corpus
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    done = list(pool.map(_prepare_elsewhere, [(tmp_path, tokenizer_path)] * 2))
  prepared = [line.split(":")[0] for lines in done for line in lines]
  assert sorted(prepared) == [f"  shard {i}/6" for i in range(1, 7)]  # each exactly once, by one of them


def test_the_tokenizer_is_trained_once_per_corpus_and_config(tmp_path):
  write_corpus(tmp_path / "corpus", files=2)
  cfg = corpus_config(tmp_path)
  lines = []
  path = cache.corpus_tokenizer(cfg, out=lines.append)
  assert cache.corpus_tokenizer(cfg, out=lines.append) == path and len(lines) == 1
  other = corpus_config(tmp_path, **{"tokenizer.vocab_size": 150})
  assert cache.corpus_tokenizer(other, out=lines.append) != path and len(lines) == 2
  with open(tmp_path / "corpus" / "part-0.txt", "a") as f:  # an edited corpus file is another corpus
    f.write("\n\nan added paragraph")
  assert cache.corpus_tokenizer(cfg, out=lines.append) != path and len(lines) == 3


def test_tokenizer_sample_is_seeded_bounded_and_uniform():
  docs = [f"line {i}" for i in range(20000)]
  sample = tokenizer.sample_lines(docs, 1000, seed=0)
  assert len(sample) == len(set(sample)) == 1000
  index = [int(line.split()[1]) for line in sample]
  assert index == sorted(index)  # corpus order
  assert abs(np.mean(index) - 10000) < 600 and np.histogram(index, 4, (0, 20000))[0].min() > 200
  assert tokenizer.sample_lines(docs, 1000, seed=0) == sample
  assert tokenizer.sample_lines(docs, 1000, seed=1) != sample
  assert tokenizer.sample_lines(docs[:10], 1000, seed=0) == docs[:10]
  assert tokenizer.sample_lines(docs, 0, seed=0) == docs
