"""The honest non-neural baselines, run in the fine-tuning harness (same task, split, label fraction and
seed; same metrics.json): for classification TF-IDF word uni+bigrams and a linear SVM with C chosen on the
validation set, for generation the lead (the first words of the source), for question answering the
context sentence with the most words of the question (tasks/qa.py) and the constant no-answer. A
fine-tuned language model has to beat these to be worth its cost.

Shape suffixes: C classes.
"""

import json
import os
from typing import Sequence

import jax
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from lmlab.tasks import metrics, qa

# A fitted TF-IDF + SVM is saved as plain data, never pickled (a pickle in a work directory received
# from someone else could run code): the vocabulary and settings as JSON, the arrays as .npz.
MODEL_JSON, MODEL_ARRAYS = "baseline_model.json", "baseline_model.npz"
_VECTORIZER_SETTINGS = ("sublinear_tf", "ngram_range", "min_df", "strip_accents", "lowercase", "analyzer",
                        "token_pattern", "norm", "use_idf", "smooth_idf")

C_GRID = (0.1, 1.0, 10.0)


# Texts with fewer spaces than this per character are not split into words by spaces (Chinese, Japanese,
# Thai...): the baseline reads their character n-grams instead of whole runs of characters as "words".
MIN_SPACES_PER_CHARACTER = 0.05


def analyzer_for(texts: Sequence[str]) -> str:
  """"word" (uni+bigrams of words) for space-separated text, else "char" (1-3-grams of characters)."""
  spaces = sum(t.count(" ") for t in texts) / max(sum(len(t) for t in texts), 1)
  return "word" if spaces >= MIN_SPACES_PER_CHARACTER else "char"


def make_pipeline(c: float, seed: int, analyzer: str = "word") -> Pipeline:
  """An unfitted TF-IDF + LinearSVC pipeline with regularization strength C = c, over word uni+bigrams
  or (analyzer="char") character 1-3-grams."""
  ngrams = {"word": dict(analyzer="word", ngram_range=(1, 2)), "char": dict(analyzer="char", ngram_range=(1, 3))}
  return Pipeline([
      # Sublinear tf damps long documents' repeated words; min_df=1 keeps every n-gram because the
      # low-label regimes (one example per class) have nothing to spare.
      ("tfidf", TfidfVectorizer(sublinear_tf=True, min_df=1, strip_accents="unicode", **ngrams[analyzer])),
      ("svm", LinearSVC(C=c, random_state=seed)),
  ])


def fit_tfidf_svm(train_texts: Sequence[str], train_labels, val_texts: Sequence[str], val_labels,
                  seed: int, c_grid: Sequence[float] = C_GRID) -> tuple[Pipeline, dict]:
  """Fits one pipeline per C on the training set and keeps the best by validation accuracy.

  Ties go to the smaller C (stronger regularization). The training set needs at least 2 distinct classes
  (LinearSVC raises otherwise); classes absent from it are never predicted, see class_scores.

  Returns:
    (fitted pipeline, {"C": chosen C, "validation_accuracy_by_C": {str(C): accuracy}, "analyzer": word
    or char n-grams, see analyzer_for}).
  """
  train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
  analyzer = analyzer_for(train_texts)
  best, best_c, best_acc, by_c = None, None, -1.0, {}
  for c in sorted(c_grid):
    pipeline = make_pipeline(c, seed, analyzer).fit(list(train_texts), train_labels)
    acc = float(accuracy_score(val_labels, pipeline.predict(list(val_texts))))
    by_c[str(c)] = acc
    if acc > best_acc:  # strict: with C ascending, a tie keeps the smaller C
      best, best_c, best_acc = pipeline, c, acc
  return best, {"C": best_c, "validation_accuracy_by_C": by_c, "analyzer": analyzer}


class LinearTextModel:
  """A fitted TF-IDF + linear classifier as plain data: decision_function and classes_ as the sklearn
  pipeline has them, saved and loaded without pickle."""

  def __init__(self, vectorizer: TfidfVectorizer, coef, intercept, classes):
    self.vectorizer, self.coef, self.intercept = vectorizer, np.asarray(coef), np.asarray(intercept)
    self.classes_ = np.asarray(classes)

  @classmethod
  def from_pipeline(cls, pipeline: Pipeline) -> "LinearTextModel":
    svm = pipeline.named_steps["svm"]
    return cls(pipeline.named_steps["tfidf"], svm.coef_, svm.intercept_, svm.classes_)

  def decision_function(self, texts) -> np.ndarray:
    scores = self.vectorizer.transform(list(texts)) @ self.coef.T + self.intercept
    return scores.ravel() if self.coef.shape[0] == 1 else scores

  def save(self, run_dir: str) -> None:
    settings = {key: getattr(self.vectorizer, key) for key in _VECTORIZER_SETTINGS}
    vocabulary = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
    with open(os.path.join(run_dir, MODEL_JSON), "w") as f:
      json.dump({"vectorizer": settings, "vocabulary": vocabulary}, f)
    np.savez(os.path.join(run_dir, MODEL_ARRAYS), idf=self.vectorizer.idf_, coef=self.coef,
             intercept=self.intercept, classes=self.classes_)

  @classmethod
  def load(cls, run_dir: str) -> "LinearTextModel":
    with open(os.path.join(run_dir, MODEL_JSON)) as f:
      saved = json.load(f)
    settings = dict(saved["vectorizer"], ngram_range=tuple(saved["vectorizer"]["ngram_range"]))
    vocabulary = {term: i for i, term in enumerate(saved["vocabulary"])}
    vectorizer = TfidfVectorizer(vocabulary=vocabulary, **settings)
    vectorizer.vocabulary_ = vocabulary
    with np.load(os.path.join(run_dir, MODEL_ARRAYS), allow_pickle=False) as arrays:
      vectorizer.idf_ = arrays["idf"]
      return cls(vectorizer, arrays["coef"], arrays["intercept"], arrays["classes"])


def class_scores(pipeline, texts: Sequence[str], num_classes: int) -> np.ndarray:
  """Float [N, num_classes] decision scores in label-id order; -inf for classes absent from training.

  The argmax over a row is pipeline.predict's class, so the scores can stand in for a model's logits.
  """
  scores = np.asarray(pipeline.decision_function(list(texts)), np.float64)
  if scores.ndim == 1:
    # Binary LinearSVC gives one score s, positive for classes_[1]; [-s, s] keeps argmax == predict.
    scores = np.stack([-scores, scores], axis=1)
  out = np.full((scores.shape[0], num_classes), -np.inf)
  out[:, np.asarray(pipeline.classes_, int)] = scores
  return out


def lead_words(targets: Sequence[str]) -> int:
  """The lead baseline's length: the median word count of the training targets (at least 1)."""
  return max(1, int(np.median([len(t.split()) for t in targets])))


def lead(sources: Sequence[str], num_words: int) -> list[str]:
  """The classic summarization baseline: the first num_words words of each source."""
  return [" ".join(source.split()[:num_words]) for source in sources]


def fit_and_evaluate(cfg, task, run_dir: str, log) -> tuple[dict, list | None]:
  """Fits config.finetune.baseline on the task's training split; returns ({baseline, validation, test}
  for metrics.json, the test outputs of a generation baseline or None) and saves what predict needs."""
  if task.kind == "qa":
    method = cfg.finetune.baseline
    log.print("Overlap baseline: the context sentence sharing the most words with the question" if method == "overlap"
              else "No-answer baseline: every question is called unanswerable")
    out = {"baseline": {"method": method}}
    for name, split in (("validation", task.validation), ("test", task.test)):
      outputs = qa_answers(method, split.contexts, split.texts)
      out[name] = qa.qa_report(outputs, split.answers)
    return out, outputs
  if cfg.finetune.baseline == "lead":
    words = lead_words(task.train.targets)
    log.print(f"Lead baseline: the first {words} words of each source (the median training target length)")
    out = {"baseline": {"method": "lead", "words": words}}
    for name, split in (("validation", task.validation), ("test", task.test)):
      outputs = lead(split.texts, words)
      out[name] = metrics.generation_report(outputs, split.targets)
    return out, outputs
  pipeline, info = fit_tfidf_svm(task.train.texts, task.train.labels, task.validation.texts,
                                 task.validation.labels, cfg.seed)
  log.print(f"TF-IDF ({info['analyzer']} n-grams) + linear SVM: C = {info['C']} (validation accuracy by C: "
            f"{info['validation_accuracy_by_C']})")
  out = {"baseline": dict(info, method="tfidf_svm")}
  for name, split in (("validation", task.validation), ("test", task.test)):
    scores = class_scores(pipeline, split.texts, len(task.label_names))
    out[name] = metrics.classification_report(split.labels, scores.argmax(-1), task.label_names)
  if jax.process_index() == 0:
    LinearTextModel.from_pipeline(pipeline).save(run_dir)
  return out, None


def qa_answers(method: str, contexts: list[str], questions: list[str]) -> list[str]:
  if method == "overlap":
    return [qa.overlap_baseline(c, q) for c, q in zip(contexts, questions)]
  return [""] * len(questions)


def predict(cfg, run_dir: str, texts: list[str], label_names: tuple[str, ...], context: str | None = None
            ) -> list[dict]:
  """A finished baseline run's output per text: {"output"} (lead), {"label", "scores"} (SVM), or
  {"answer"} (question answering: each text is a question about `context`)."""
  if cfg.finetune.baseline in ("overlap", "no_answer"):
    return [{"answer": a} for a in qa_answers(cfg.finetune.baseline, [context] * len(texts), texts)]
  if cfg.finetune.baseline == "lead":
    with open(os.path.join(run_dir, "metrics.json")) as f:
      words = json.load(f)["baseline"]["words"]
    return [{"output": text} for text in lead(texts, words)]
  scores = class_scores(LinearTextModel.load(run_dir), texts, len(label_names))
  return [{"label": label_names[int(s.argmax())], "scores": dict(zip(label_names, map(float, s)))}
          for s in scores]
