"""A split's encoded documents as one token stream, read by position: the shards of data/shards.py
(memory-mapped files) or, for small inputs and tests, arrays in memory.

Each piece (a shard) is a pair (tokens_N, starts_M1): the concatenated documents ([BOS] ids [EOS] each)
and the offset of each document in tokens_N followed by N. Nothing is loaded whole: rows read the token
ranges they need, so memory does not grow with the corpus. Shape suffixes: N tokens, M documents, S
pieces; the 1 in M1 / S1 marks one extra closing entry.
"""

from typing import Iterator

import numpy as np


class Documents:
  """Pieces (tokens_N, starts_M1) read as one stream; see the module docstring."""

  def __init__(self, pieces: list[tuple[np.ndarray, np.ndarray]]):
    self._tokens = [tokens_N for tokens_N, _ in pieces]
    self._starts = [starts_M1 for _, starts_M1 in pieces]
    self._token_offset_S1 = np.concatenate([[0], np.cumsum([len(t) for t in self._tokens])]).astype(np.int64)
    self._doc_offset_S1 = np.concatenate([[0], np.cumsum([len(s) - 1 for s in self._starts])]).astype(np.int64)

  @classmethod
  def from_list(cls, docs: list[np.ndarray]) -> "Documents":
    """In memory, as one piece."""
    lengths_M = np.array([len(d) for d in docs], np.int64)
    tokens_N = np.concatenate(docs).astype(np.int32) if docs else np.zeros(0, np.int32)
    return cls([(tokens_N, np.concatenate([[0], np.cumsum(lengths_M)]).astype(np.int64))])

  @property
  def num_tokens(self) -> int:
    return int(self._token_offset_S1[-1])

  @property
  def num_docs(self) -> int:
    return int(self._doc_offset_S1[-1])

  def tokens(self, start: int, stop: int) -> np.ndarray:
    """int32 tokens [start, stop) of the stream (stop is clipped to its end)."""
    stop = min(stop, self.num_tokens)
    parts = []
    s = int(np.searchsorted(self._token_offset_S1, start, side="right")) - 1
    while start < stop:
      base = self._token_offset_S1[s]
      end = min(stop, self._token_offset_S1[s + 1])
      parts.append(self._tokens[s][start - base:end - base])
      start, s = end, s + 1
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)

  def doc_starts(self, start: int, stop: int) -> np.ndarray:
    """Stream offsets in [start, stop) where a document begins (int64, ascending; an empty document's
    start may repeat the next one's)."""
    found = []
    first = int(np.searchsorted(self._token_offset_S1, start, side="right")) - 1
    last = int(np.searchsorted(self._token_offset_S1, stop, side="left"))
    for s in range(max(first, 0), min(last, len(self._starts))):
      base, starts_M1 = self._token_offset_S1[s], self._starts[s]
      lo, hi = np.searchsorted(starts_M1[:-1], [start - base, stop - base], side="left")
      found.append(np.asarray(starts_M1[lo:hi], np.int64) + base)
    return np.concatenate(found) if found else np.zeros(0, np.int64)

  def doc_bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of every document in the stream, int64 [M] each (reads every piece's starts:
    8 bytes per document)."""
    starts = [np.asarray(s[:-1], np.int64) + base for s, base in zip(self._starts, self._token_offset_S1)]
    lengths = [np.diff(np.asarray(s, np.int64)) for s in self._starts]
    if not starts:
      return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(lengths)

  def __iter__(self) -> Iterator[np.ndarray]:
    """Every document in order, as int32 arrays (read one piece at a time)."""
    for tokens_N, starts_M1 in zip(self._tokens, self._starts):
      starts = np.asarray(starts_M1)
      for a, b in zip(starts[:-1], starts[1:]):
        yield np.asarray(tokens_N[a:b], np.int32)
