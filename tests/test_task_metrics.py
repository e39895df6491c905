"""Tests of the downstream-task metrics (hand-computed classification and ROUGE / BLEU values) and of the
TF-IDF + linear SVM baseline (toy separable tasks, C selection, score layout)."""

import json
import math
import os

import numpy as np
import pytest
import sacrebleu

from lmlab.tasks import baseline, metrics

# Hand-made example over 4 classes: "c" is never predicted, "delta" never occurs at all.
NAMES = ["a", "b", "c", "delta"]
TRUE = [0, 0, 0, 1, 1, 2, 2]
PRED = [0, 0, 1, 1, 1, 0, 1]


@pytest.mark.filterwarnings("error")  # zero_division=0 must keep sklearn's UndefinedMetricWarning away
def test_classification_report_matches_hand_values():
  report = metrics.classification_report(TRUE, PRED, NAMES)
  assert json.loads(json.dumps(report)) == report  # JSON-ready: plain floats, ints, lists
  assert report["accuracy"] == pytest.approx(4 / 7)  # correct at positions 0, 1, 3, 4
  pc = report["per_class"]
  assert list(pc) == NAMES
  # a: predicted at 0, 1, 5 (2 right); true at 0, 1, 2 (2 found).
  assert pc["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
  # b: predicted at 2, 3, 4, 6 (2 right); true at 3, 4 (both found); f1 = 2 * 0.5 * 1 / 1.5.
  assert pc["b"] == pytest.approx(
      {"precision": 2 / 4, "recall": 2 / 2, "f1": 2 * 0.5 * 1 / 1.5, "support": 2})
  # c: never predicted -> precision 0 (not NaN), recall 0 / 2.
  assert pc["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
  assert pc["delta"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
  # Macro-F1 averages over all 4 classes, absent ones included: (2/3 + 2/3 + 0 + 0) / 4.
  assert report["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 4)
  # Rows are true classes, columns predicted: true a -> predicted b once at position 2, never the reverse.
  assert report["confusion_matrix"] == [
      [2, 1, 0, 0],
      [0, 2, 0, 0],
      [1, 1, 0, 0],
      [0, 0, 0, 0],
  ]


def test_format_classification_and_confusion_png(tmp_path):
  report = metrics.classification_report(TRUE, PRED, NAMES)
  text = metrics.format_classification(report)
  for name in NAMES:
    assert name in text
  assert f"{4 / 7:.4f}" in text and f"{1 / 3:.4f}" in text  # accuracy and macro-F1
  path = tmp_path / "confusion.png"
  metrics.save_confusion_matrix(report, str(path), title="toy")
  assert path.read_bytes().startswith(b"\x89PNG")


def test_generation_report_matches_hand_values():
  # Identical strings: every score is perfect.
  same = "the quick brown fox jumps over the lazy dog"
  report = metrics.generation_report([same], [same])
  assert report == pytest.approx(
      {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "bleu": 100.0, "count": 1})

  # Prediction "the cat sat" against reference "the cat sat on the mat":
  # ROUGE-1: precision 3/3, recall 3/6; ROUGE-2: bigrams "the cat", "cat sat" all match, precision 2/2,
  # recall 2/5; ROUGE-L: LCS 3 tokens, same as ROUGE-1.
  f1 = 2 * 1 * 0.5 / 1.5
  f2 = 2 * 1 * 0.4 / 1.4
  report = metrics.generation_report(["the cat sat"], ["the cat sat on the mat"])
  assert report["rouge1"] == pytest.approx(100 * f1)
  assert report["rouge2"] == pytest.approx(100 * f2)
  assert report["rougeL"] == pytest.approx(100 * f1)

  # ROUGE is the mean over examples, not a pooled count.
  preds, refs = ["the cat sat", same], ["the cat sat on the mat", same]
  report = metrics.generation_report(preds, refs)
  assert report["rouge1"] == pytest.approx((100 * f1 + 100) / 2)
  assert report["rouge2"] == pytest.approx((100 * f2 + 100) / 2)
  assert report["count"] == 2
  # BLEU is sacrebleu's corpus BLEU (pooled n-gram counts), not a mean of sentence scores.
  assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
  sentence_mean = np.mean([sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(preds, refs)])
  assert report["bleu"] != pytest.approx(sentence_mean)


def test_bleu_brevity_penalty_by_hand():
  # All n-gram precisions are 1 and the prediction is 6 tokens against 7: BLEU = 100 * exp(1 - 7/6).
  report = metrics.generation_report(["the cat sat on the mat"], ["the cat sat on the mat today"])
  assert report["bleu"] == pytest.approx(100 * math.exp(1 - 7 / 6), abs=1e-6)


def test_generation_report_stems_and_validates():
  assert metrics.generation_report(["running dogs"], ["run dog"])["rouge1"] == pytest.approx(100.0)
  with pytest.raises(ValueError):
    metrics.generation_report(["a b", "c d"], ["a b"])
  with pytest.raises(ValueError):
    metrics.generation_report([], [])
  line = metrics.format_generation(metrics.generation_report(["the cat sat"], ["the cat sat on the mat"]))
  assert "\n" not in line and "ROUGE-1 66.67" in line and "BLEU" in line


# Toy classification: each class draws its words from its own vocabulary, so the task is separable.
VOCABS = [
    ["goal", "match", "team", "score", "coach", "league"],
    ["bread", "cheese", "soup", "salad", "pasta", "sauce"],
    ["chip", "server", "code", "cloud", "robot", "laptop"],
    ["river", "forest", "mountain", "valley", "lake", "meadow"],
    ["violin", "drum", "piano", "guitar", "flute", "choir"],
]


def toy(rng, per_class, classes=(0, 1, 2)):
  """per_class random 5-word sentences for each class id in classes."""
  texts, labels = [], []
  for c in classes:
    for _ in range(per_class):
      texts.append(" ".join(rng.choice(VOCABS[c], size=5)))
      labels.append(c)
  return texts, np.array(labels)


def test_tfidf_svm_separates_toy_task_and_scores_follow_predict():
  rng = np.random.default_rng(0)
  train, val, test = toy(rng, 10), toy(rng, 5), toy(rng, 10)
  pipeline, info = baseline.fit_tfidf_svm(*train, *val, seed=0)
  assert np.mean(pipeline.predict(test[0]) == test[1]) == 1.0
  # Every C separates the validation set, so the tie goes to the smallest C.
  assert info["validation_accuracy_by_C"] == {"0.1": 1.0, "1.0": 1.0, "10.0": 1.0}
  assert info["C"] == 0.1
  scores = baseline.class_scores(pipeline, test[0], 3)
  assert scores.shape == (30, 3) and scores.dtype == np.float64
  np.testing.assert_array_equal(np.argmax(scores, axis=1), pipeline.predict(test[0]))


def test_tfidf_svm_prefers_the_better_c_over_a_tie_break():
  # On an imbalanced training set (10 / 2 / 5), a tiny C shrinks the weights to ~0 and predicts one class
  # for everything; the grid search must pick the larger C that actually fits.
  rng = np.random.default_rng(0)
  texts, labels = toy(rng, 10)
  keep = np.r_[0:10, 10:12, 20:25]
  val = toy(rng, 5)
  _, info = baseline.fit_tfidf_svm([texts[i] for i in keep], labels[keep], *val, seed=0,
                                   c_grid=(1.0, 1e-4, 0.1))
  acc = info["validation_accuracy_by_C"]
  assert set(acc) == {"0.0001", "0.1", "1.0"}
  assert acc["0.0001"] < acc["1.0"] == 1.0
  assert info["C"] == 1.0


def test_tfidf_svm_one_example_per_class():
  # Label fraction 0.01 of a 5-class task: a single training sentence per class.
  rng = np.random.default_rng(1)
  train = toy(rng, 1, classes=range(5))
  pipeline, info = baseline.fit_tfidf_svm(*train, *train, seed=0)
  assert info["C"] in baseline.C_GRID
  np.testing.assert_array_equal(pipeline.predict(train[0]), train[1])
  scores = baseline.class_scores(pipeline, train[0], 5)
  assert scores.shape == (5, 5)
  np.testing.assert_array_equal(np.argmax(scores, axis=1), train[1])


def test_class_scores_two_classes_and_absent_class():
  # Classes 0 and 2 of a 3-class task: LinearSVC is binary (one score column) and class 1 is unseen.
  rng = np.random.default_rng(2)
  train, test = toy(rng, 5, classes=(0, 2)), toy(rng, 5, classes=(0, 2))
  pipeline, _ = baseline.fit_tfidf_svm(*train, *train, seed=0)
  scores = baseline.class_scores(pipeline, test[0], 3)
  assert scores.shape == (10, 3)
  assert np.all(scores[:, 1] == -np.inf) and np.all(np.isfinite(scores[:, [0, 2]]))
  np.testing.assert_array_equal(np.argmax(scores, axis=1), pipeline.predict(test[0]))
  np.testing.assert_array_equal(np.argmax(scores, axis=1), test[1])
  # A plain 2-class task: the one decision column becomes two mirrored ones, argmax = predict.
  train, test = toy(rng, 5, classes=(0, 1)), toy(rng, 5, classes=(0, 1))
  pipeline, _ = baseline.fit_tfidf_svm(*train, *train, seed=0)
  scores = baseline.class_scores(pipeline, test[0], 2)
  assert scores.shape == (10, 2)
  np.testing.assert_allclose(scores[:, 0], -scores[:, 1])
  np.testing.assert_array_equal(np.argmax(scores, axis=1), test[1])


@pytest.mark.parametrize("num_classes", [2, 3])
def test_the_baseline_round_trips_without_pickle(num_classes, tmp_path):
  texts = ["goal match striker", "bank shares profit", "album guitar tour", "keeper league cup",
           "market bank rates", "band album singer"]
  labels = np.arange(6) % num_classes
  pipeline, _ = baseline.fit_tfidf_svm(texts, labels, texts, labels, seed=0)
  baseline.LinearTextModel.from_pipeline(pipeline).save(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == [baseline.MODEL_JSON, baseline.MODEL_ARRAYS]
  loaded = baseline.LinearTextModel.load(str(tmp_path))
  queries = ["the striker scored in the cup", "bank profit", "a new album", "unseen words only"]
  np.testing.assert_allclose(baseline.class_scores(loaded, queries, num_classes),
                             baseline.class_scores(pipeline, queries, num_classes), rtol=1e-12)
  with open(tmp_path / baseline.MODEL_ARRAYS, "rb") as f:
    assert b"pickle" not in f.read()  # plain arrays (np.load refuses object arrays without allow_pickle)


def test_the_baseline_reads_character_ngrams_where_text_has_no_spaces(tmp_path):
  good, bad = "好看精彩推荐喜欢", "失望糟糕难看浪费"
  rng = np.random.default_rng(0)
  texts = ["".join(rng.choice(list(words), 6)) + "。" for words in (good, bad) for _ in range(10)]
  labels = np.repeat([0, 1], 10)
  assert baseline.analyzer_for(texts) == "char" and baseline.analyzer_for(["the striker scored"]) == "word"
  pipeline, info = baseline.fit_tfidf_svm(texts, labels, texts, labels, seed=0)
  assert info["analyzer"] == "char" and info["validation_accuracy_by_C"][str(info["C"])] == 1.0
  queries = ["非常好看，推荐", "太失望了，浪费"]  # unseen sentences: words of spaceless text never recur whole
  assert baseline.class_scores(pipeline, queries, 2).argmax(1).tolist() == [0, 1]
  baseline.LinearTextModel.from_pipeline(pipeline).save(str(tmp_path))
  loaded = baseline.LinearTextModel.load(str(tmp_path))
  assert baseline.class_scores(loaded, queries, 2).argmax(1).tolist() == [0, 1]
