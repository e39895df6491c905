"""The sentencepiece tokenizer: trained once per work directory, in memory, then reloaded from there."""

import io
import math
import os
import tempfile
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from lmlab.errors import DataError

# Fixed special ids: padding must be 0 because packed rows pad with zeros.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Reserved pieces every lmlab tokenizer has, right after those (sentencepiece user-defined symbols, so the
# strings "[MASK]" or "<extra_id_0>" in text encode to these ids): BERT's [CLS] [SEP] [MASK], then
# config.tokenizer.num_sentinels T5 sentinels <extra_id_0>, <extra_id_1>, ... from FIRST_SENTINEL_ID on.
CLS_ID, SEP_ID, MASK_ID, FIRST_SENTINEL_ID = 4, 5, 6, 7
RESERVED_PIECES = ("[CLS]", "[SEP]", "[MASK]")


def sentinel_pieces(num_sentinels: int) -> list[str]:
  return [f"<extra_id_{i}>" for i in range(num_sentinels)]


def num_special_ids(num_sentinels: int) -> int:
  """Ids below this are special (pad, unk, bos, eos, reserved pieces, sentinels): never masked or sampled
  as random replacements."""
  return FIRST_SENTINEL_ID + num_sentinels

# sentencepiece silently drops training sentences longer than max_sentence_length (4,192 bytes);
# longer lines are cut on whitespace into pieces below this many bytes.
MAX_PIECE_BYTES = 4000


def load(path: str, tok_cfg) -> spm.SentencePieceProcessor:
  """The tokenizer saved at `path`; raises ValueError if it does not match tok_cfg (reserved pieces,
  sentinels, vocabulary size)."""
  if not os.path.exists(path):
    raise DataError(f"{path} does not exist: no tokenizer has been trained there yet.")
  sp = spm.SentencePieceProcessor(model_file=path)
  expected = list(RESERVED_PIECES) + sentinel_pieces(tok_cfg.num_sentinels)
  # One piece past the expected ones too: a tokenizer with more sentinels must not pass either.
  found = [sp.id_to_piece(i) for i in range(CLS_ID, min(CLS_ID + len(expected) + 1, sp.get_piece_size()))]
  if found[:len(expected)] != expected or sentinel_pieces(tok_cfg.num_sentinels + 1)[-1] in found:
    raise DataError(
        f"The tokenizer {path} does not reserve [CLS] [SEP] [MASK] and config.tokenizer.num_sentinels = "
        f"{tok_cfg.num_sentinels} sentinels at ids {CLS_ID}..: it was trained by another lmlab version or "
        "config; use a new workdir.")
  if sp.get_piece_size() != tok_cfg.vocab_size:
    raise DataError(
        f"The tokenizer {path} has {sp.get_piece_size()} pieces but config.tokenizer.vocab_size = "
        f"{tok_cfg.vocab_size}: this work directory was trained with another vocabulary; use a new workdir.")
  return sp


def train(path: str, docs: Iterable[str], tok_cfg) -> None:
  """Trains a tokenizer on the documents and saves it at `path` (atomically)."""
  model = train_model(docs, tok_cfg)
  pieces = piece_count(model)
  if pieces != tok_cfg.vocab_size:
    # Only the char model gets here: its vocabulary is the corpus's characters, whatever vocab_size says.
    raise DataError(
        f"config.tokenizer.model_type = {tok_cfg.model_type!r} gives {pieces} pieces on this corpus, not "
        f"config.tokenizer.vocab_size = {tok_cfg.vocab_size}; set --config.tokenizer.vocab_size={pieces}.")
  save_model(path, model)


def training_lines(docs: Iterable[str]) -> Iterator[str]:
  """Non-empty lines of the documents, each below MAX_PIECE_BYTES bytes (so none is silently dropped)."""
  for doc in docs:
    for line in doc.split("\n"):
      line = line.strip()
      if not line:
        continue
      if len(line.encode("utf-8")) < MAX_PIECE_BYTES:
        yield line
      else:
        yield from _cut_long_line(line)


def sample_lines(docs: Iterable[str], max_lines: int, seed: int) -> list[str]:
  """A uniform sample of at most max_lines of training_lines(docs) (0: all), kept in corpus order;
  seeded, and streamed: memory holds the sample, never the corpus (reservoir sampling, Li's Algorithm L,
  which draws random numbers only for the lines it takes)."""
  lines = enumerate(training_lines(docs))
  if max_lines <= 0:
    return [line for _, line in lines]
  reservoir = []
  for i, line in lines:
    reservoir.append((i, line))
    if len(reservoir) == max_lines:
      break
  else:
    return [line for _, line in reservoir]
  rng = np.random.default_rng(seed)
  w = math.exp(math.log(rng.random()) / max_lines)
  take = max_lines - 1 + math.floor(math.log(rng.random()) / math.log1p(-w)) + 1
  for i, line in lines:
    if i == take:
      reservoir[rng.integers(max_lines)] = (i, line)
      w *= math.exp(math.log(rng.random()) / max_lines)
      take += math.floor(math.log(rng.random()) / math.log1p(-w)) + 1
  return [line for _, line in sorted(reservoir)]


def _cut_long_line(line: str) -> Iterator[str]:
  """Greedy whitespace-separated pieces below MAX_PIECE_BYTES; a single overlong word is cut by chars."""
  piece, size = [], 0
  for word in line.split():
    n = len(word.encode("utf-8")) + 1
    if n > MAX_PIECE_BYTES:
      # At most 4 bytes per character: 999 characters always fit.
      for i in range(0, len(word), (MAX_PIECE_BYTES - 1) // 4):
        yield word[i:i + (MAX_PIECE_BYTES - 1) // 4]
      continue
    if size + n > MAX_PIECE_BYTES:
      yield " ".join(piece)
      piece, size = [], 0
    piece.append(word)
    size += n
  if piece:
    yield " ".join(piece)


def piece_count(model: bytes | str) -> int:
  """The vocabulary size of a serialized model, or of the model saved at a path."""
  if isinstance(model, str):
    return spm.SentencePieceProcessor(model_file=model).get_piece_size()
  return spm.SentencePieceProcessor(model_proto=model).get_piece_size()


def train_model(docs: Iterable[str], tok_cfg, fit_vocab: bool = False) -> bytes:
  """The serialized model trained in memory on the documents; fit_vocab: at most tok_cfg.vocab_size
  pieces, fewer when the texts do not support that many (a small task), instead of an error."""
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_lines(docs),
        model_writer=model,
        vocab_size=tok_cfg.vocab_size,
        model_type=tok_cfg.model_type,
        character_coverage=tok_cfg.character_coverage,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        user_defined_symbols=list(RESERVED_PIECES) + sentinel_pieces(tok_cfg.num_sentinels),
        num_threads=os.cpu_count() or 1,
        input_sentence_size=0,  # every sentence given: callers sample them (sample_lines), seeded
        shuffle_input_sentence=False,
        minloglevel=2,  # Only errors; training otherwise logs hundreds of lines.
        hard_vocab_limit=not fit_vocab,
    )
  except RuntimeError as e:
    if "sentences_.empty()" in str(e):
      raise DataError("The tokenizer's training documents contain no text.") from e
    message = str(e)
    if "Vocabulary size" in message:
      reason = message[message.index("Vocabulary size"):].strip()  # Drop sentencepiece's source location.
      raise DataError(f"config.tokenizer.vocab_size = {tok_cfg.vocab_size} does not fit this corpus "
                      f"({tok_cfg.model_type} model): {reason}") from e
    raise
  return model.getvalue()


def save_model(path: str, data: bytes) -> None:
  """Temp file + rename: a crash or a concurrent reader never sees a half-written model."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tokenizer-", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def encode_documents(sp: spm.SentencePieceProcessor, docs: list[str], num_threads: int = -1) -> list[np.ndarray]:
  """[BOS] + ids + [EOS] as int32 per document, encoded in one batch call (~8x faster than one by one;
  num_threads -1: sentencepiece's own threads over every core)."""
  out = []
  for ids in sp.encode(docs, num_threads=num_threads):
    arr = np.empty(len(ids) + 2, np.int32)
    arr[0], arr[1:-1], arr[-1] = BOS_ID, ids, EOS_ID
    out.append(arr)
  return out


def unknown_rate(encoded) -> float:
  """Fraction of the tokens that are <unk> (ids lists or arrays; BOS/EOS count as tokens but are never
  unknown, which matters little for documents of many tokens)."""
  total = sum(len(ids) for ids in encoded)
  unknown = sum(int(np.count_nonzero(np.asarray(ids) == UNK_ID)) for ids in encoded)
  return unknown / max(total, 1)


def check_unknown_rate(rate: float, limit: float, what: str, fix: str) -> str:
  """One line reporting the unknown-token rate of `what`; DataError when it is over `limit` (then the
  tokenizer's vocabulary does not fit the data: another language or script, binary files...)."""
  if rate > limit:
    raise DataError(f"{rate:.1%} of the tokens of {what} are unknown to the tokenizer (limit "
                    f"config.data.max_unknown_rate = {limit:.1%}): its vocabulary does not fit this data "
                    f"(another language or script, binary files?). {fix}")
  return f"Unknown tokens: {rate:.2%} of {what}"
