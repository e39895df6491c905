"""Near-duplicate documents across splits: which evaluation documents repeat training text.

BBC News files some stories twice: bbc_news.py keeps byte-identical copies in one split, but near-copies
(a story re-filed with another headline, an edited paragraph, a follow-up quoting the first) fall on both
sides of the split. An evaluation document that mostly repeats training text rewards memorisation, an
n-gram model's lookups most of all, so comparisons across model families also report the loss on the
evaluation documents that are not near-duplicates.

A document's containment is the fraction of its shingles (every run of SHINGLE consecutive token ids,
BOS and EOS included) that occur anywhere in the training documents (Broder 1997's resemblance by
shingles, in its containment form); a document with containment >= threshold is a near-duplicate.
Shingles are hashed to uint64 (polynomial hash, wrapping arithmetic: collisions are negligible at
millions of shingles), so the test is np.unique and np.isin over the splits, no per-token Python loop.
Documents shorter than SHINGLE tokens have no shingle and count as new (containment 0).
"""

import numpy as np

from lmlab.data.documents import Documents
from lmlab.errors import DataError

SHINGLE = 8
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: distinct windows map to well-spread hashes


def shingles(docs: list[np.ndarray], n: int = SHINGLE) -> tuple[np.ndarray, np.ndarray]:
  """(hash_K, doc_K): the hash of every window of n consecutive tokens inside one document, and the index
  of its document (windows across a document boundary are left out)."""
  if not docs:
    return np.zeros(0, np.uint64), np.zeros(0, np.int64)
  lengths_M = np.array([len(d) for d in docs], np.int64)
  tokens_N = np.concatenate(docs).astype(np.uint64)
  doc_N = np.repeat(np.arange(len(docs)), lengths_M)
  count = len(tokens_N) - n + 1
  if count <= 0:
    return np.zeros(0, np.uint64), np.zeros(0, np.int64)
  hash_K = np.zeros(count, np.uint64)
  with np.errstate(over="ignore"):
    for j in range(n):
      hash_K = hash_K * _MULTIPLIER + tokens_N[j:j + count] + np.uint64(1)
  inside_K = doc_N[:count] == doc_N[n - 1:]
  return hash_K[inside_K], doc_N[:count][inside_K]


def containment(train_docs: list[np.ndarray], eval_docs: list[np.ndarray], n: int = SHINGLE) -> np.ndarray:
  """Per evaluation document (float [M]), the fraction of its shingles found in the training documents."""
  train_hash, _ = shingles(train_docs, n)
  eval_hash, eval_doc = shingles(eval_docs, n)
  found_K = np.isin(eval_hash, np.unique(train_hash))
  totals_M = np.bincount(eval_doc, minlength=len(eval_docs))
  hits_M = np.bincount(eval_doc, weights=found_K, minlength=len(eval_docs))
  return np.divide(hits_M, totals_M, out=np.zeros(len(eval_docs)), where=totals_M > 0)


def without_near_duplicates(train_docs: Documents, eval_docs: Documents, threshold: float,
                            n: int = SHINGLE) -> tuple[Documents, np.ndarray]:
  """(the evaluation documents whose containment in the training documents is below threshold, in order;
  the containment of every evaluation document)."""
  evaluated = list(eval_docs)
  share_M = containment(list(train_docs), evaluated, n)
  return Documents.from_list([d for d, s in zip(evaluated, share_M) if s < threshold]), share_M


def novel_documents(data_cfg, train_docs: Documents, eval_docs: Documents, out=print) -> Documents | None:
  """With data_cfg.eval_dedup > 0, the evaluation documents that are not near-duplicates of training
  documents at that threshold (logged with their count), else None."""
  if not data_cfg.eval_dedup:
    return None
  novel, share_M = without_near_duplicates(train_docs, eval_docs, data_cfg.eval_dedup)
  out(f"Validation without near-duplicates of training documents (>= {data_cfg.eval_dedup:g} of their "
      f"{SHINGLE}-token shingles in the training split): {novel.num_docs} of {eval_docs.num_docs} documents, "
      f"{novel.num_tokens:,} tokens (median overlap {np.median(share_M):.2f})")
  if not novel.num_docs:
    raise DataError(f"Every validation document is a near-duplicate of training text at config.data.eval_dedup = "
                    f"{data_cfg.eval_dedup:g}; raise it (or set 0 to turn the de-duplicated evaluation off).")
  return novel
