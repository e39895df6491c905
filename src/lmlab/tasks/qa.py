"""Question answering: the SQuAD metric and the word-overlap baseline.

Exact match and token F1 follow the official SQuAD v1.1 / v2.0 evaluation script: both strings are
lower-cased, stripped of punctuation and of the articles a / an / the, and split on whitespace; F1 is the
harmonic mean of token precision and recall over the bag of tokens; the best score over the gold answers
counts. An unanswerable question has the gold answer "" and scores 1 only for an empty prediction
(SQuAD 2.0's no-answer rule).
"""

import collections
import re
import string
from typing import Sequence

import numpy as np

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def normalize_answer(text: str) -> str:
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
  predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
  if not predicted or not wanted:  # no-answer: right only when both are empty
    return float(predicted == wanted)
  common = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(predicted), common / len(wanted)
  return 2 * precision * recall / (precision + recall)


def qa_report(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict:
  """Exact match and F1 x 100 (each example's best gold answer), overall and over the answerable and the
  unanswerable questions (gold [""]), and the counts."""
  if len(predictions) != len(golds) or not predictions:
    raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
  em = np.array([max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, golds)])
  f1 = np.array([max(token_f1(p, g) for g in gs) for p, gs in zip(predictions, golds)])
  answerable = np.array([any(normalize_answer(g) for g in gs) for gs in golds])
  report = {"exact_match": 100 * float(em.mean()), "f1": 100 * float(f1.mean()), "count": len(em),
            "answerable": int(answerable.sum())}
  for name, mask in (("has_answer", answerable), ("no_answer", ~answerable)):
    if mask.any():
      report[f"{name}_exact_match"] = 100 * float(em[mask].mean())
      report[f"{name}_f1"] = 100 * float(f1[mask].mean())
  return report


def best_threshold(candidates: Sequence[str], margins: np.ndarray, golds: Sequence[Sequence[str]]) -> float:
  """The null threshold that maximizes F1 (SQuAD 2.0's evaluation script's best_f1 search): a question is
  answered with its candidate when the candidate's margin (score minus no-answer score) reaches it. Ties go
  to the higher threshold, which answers fewer questions (as the script, which adds answers in order of
  margin while F1 strictly improves); "never answer" is the largest margin + 1."""
  margins = np.asarray(margins, np.float64)
  f1_answer = np.array([max(token_f1(c, g) for g in gs) if c else 0.0 for c, gs in zip(candidates, golds)])
  f1_null = np.array([max(token_f1("", g) for g in gs) for gs in golds])
  finite = np.isfinite(margins) & np.array([bool(c) for c in candidates])
  if not finite.any():
    return 0.0
  options = np.append(np.unique(margins[finite]), margins[finite].max() + 1.0)
  scores = [np.mean(np.where(finite & (margins >= t), f1_answer, f1_null)) for t in options]
  best = max(range(len(options)), key=lambda k: (round(scores[k], 12), options[k]))
  return float(options[best])


def format_qa(report: dict) -> str:
  threshold = f", null threshold {report['null_threshold']:.2f}" if "null_threshold" in report else ""
  return (f"exact match {report['exact_match']:.2f}  F1 {report['f1']:.2f}  (n={report['count']}, "
          f"{report['answerable']} answerable{threshold})")


def overlap_baseline(context: str, question: str) -> str:
  """The sentence of the context that shares the most distinct normalized words with the question (the
  first on ties): a retrieval baseline that never abstains."""
  asked = set(normalize_answer(question).split())
  sentences = [s for s in _SENTENCE_END.split(context.strip()) if s] or [context]
  return max(sentences, key=lambda s: len(asked & set(normalize_answer(s).split())))
