"""Packing tokenized documents into fixed-length rows (numpy only: no TensorFlow on this path).

A split's rows are read on demand (`Rows`: a row count and get(index) -> arrays), never held whole.
`PackedRows` reads any row of a document stream (data/documents.py), so a corpus on disk is never packed
at once; `pack_documents` packs a list of documents at once, the reference it must equal.
Packed rows are dicts of int32 [R, L] numpy arrays (R rows of L = seq_len tokens):
  tokens       token ids; 0 (PAD_ID) in padding.
  segment_ids  1, 2, ... numbering the documents within a row; 0 marks padding (loss weight 0).
  positions    0, 1, ... within each segment; 0 in padding.
Shape suffixes: B rows asked for, R rows, L row length, M documents, N tokens of the concatenated stream.
"""

import math
from typing import Protocol

import numpy as np

from lmlab.data.documents import Documents

KEYS = ("tokens", "segment_ids", "positions")


def pack_documents(docs: list[np.ndarray], seq_len: int) -> dict:
  """Concatenates the documents in order and cuts the stream into rows of seq_len; only the last row is
  padded. A document running past a row's end continues as a new segment (positions from 0) in the next."""
  lengths_M = np.array([len(d) for d in docs], np.int64)
  stream_N = np.concatenate(docs).astype(np.int32) if docs else np.zeros(0, np.int32)
  n = stream_N.size
  num_rows = -(-n // seq_len)
  k_N = np.arange(n)
  # A segment starts at each (non-empty) document start and at each row start.
  starts_M = np.cumsum(lengths_M) - lengths_M
  new_segment_N = np.zeros(n, bool)
  new_segment_N[starts_M[lengths_M > 0]] = True
  new_segment_N[::seq_len] = True
  # Number segments globally, then rebase per row so each row's first segment is 1.
  global_segment_N = np.cumsum(new_segment_N)
  segment_ids_N = global_segment_N - np.repeat(global_segment_N[::seq_len], seq_len)[:n] + 1
  segment_start_N = np.maximum.accumulate(np.where(new_segment_N, k_N, 0))
  positions_N = k_N - segment_start_N

  def rows(values_N):
    out = np.zeros(num_rows * seq_len, np.int32)
    out[:n] = values_N
    return out.reshape(num_rows, seq_len)

  return {"tokens": rows(stream_N), "segment_ids": rows(segment_ids_N), "positions": rows(positions_N)}


class PackedRows:
  """The rows pack_documents would make of `docs`, read one batch at a time: row r holds stream tokens
  [r L, (r + 1) L), only the last row is padded, and a new segment starts at each document start and at
  each row start."""

  def __init__(self, docs: Documents, seq_len: int):
    self.docs, self.seq_len = docs, seq_len
    self.num_rows = -(-docs.num_tokens // seq_len)

  def get(self, index_B: np.ndarray) -> dict:
    length = self.seq_len
    out = {key: np.zeros((len(index_B), length), np.int32) for key in KEYS}
    for b, r in enumerate(np.asarray(index_B, np.int64)):
      start = int(r) * length
      tokens = self.docs.tokens(start, start + length)
      n = tokens.size
      new_segment = np.zeros(n, bool)
      new_segment[self.docs.doc_starts(start, start + n) - start] = True
      new_segment[:1] = True
      k = np.arange(n)
      out["tokens"][b, :n] = tokens
      out["segment_ids"][b, :n] = np.cumsum(new_segment)
      out["positions"][b, :n] = k - np.maximum.accumulate(np.where(new_segment, k, 0))
    return out


class Rows(Protocol):
  """A split's rows: `num_rows`, and `get(index_B)` -> {name: array [B, ...]} of those rows."""
  num_rows: int

  def get(self, index_B: np.ndarray) -> dict: ...


class ArrayRows:
  """Rows held in memory as a dict of arrays with a common leading axis R."""

  def __init__(self, arrays: dict):
    self.arrays = arrays
    self.num_rows = next(iter(arrays.values())).shape[0]

  def get(self, index_B: np.ndarray) -> dict:
    return {key: value[np.asarray(index_B)] for key, value in self.arrays.items()}


class Shuffled:
  """`rows` in a fixed order that mixes distant rows: row i is rows[(a i + c) mod R] with a close to
  R / golden ratio and coprime to R (a stateless bijection: nothing per row is held in memory)."""

  def __init__(self, rows: Rows):
    self.rows, self.num_rows = rows, rows.num_rows
    if self.num_rows >= 2**31:
      raise ValueError(f"Shuffled rows need fewer than 2**31 rows, got {self.num_rows:,}.")
    a = max(int(self.num_rows * 0.6180339887), 1)
    while math.gcd(a, max(self.num_rows, 1)) != 1:
      a += 1
    self._a, self._c = a, self.num_rows // 3

  def get(self, index_B: np.ndarray) -> dict:
    return self.rows.get((np.asarray(index_B, np.int64) * self._a + self._c) % self.num_rows)
