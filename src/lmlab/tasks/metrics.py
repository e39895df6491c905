"""Downstream-task metrics: classification reports (accuracy, macro-F1, per-class scores, confusion matrix)
and generation scores (ROUGE, BLEU), as JSON-ready dicts plus readable text and a confusion-matrix plot.

The numbers come from the reference libraries (scikit-learn, rouge-score, sacrebleu) so they match what
other papers report; this module only fixes the options and the output layout.
"""

from typing import Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer
from sklearn import metrics as skm

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def classification_report(labels_true, labels_pred, label_names: Sequence[str]) -> dict:
  """Accuracy, macro-F1, per-class precision / recall / F1 / support and the confusion matrix.

  Labels are int class ids 0..C-1 with C = len(label_names). Every class is reported (and counted in the
  macro-F1) even if absent from labels_true or never predicted; undefined ratios count as 0. The confusion
  matrix has rows = true class, columns = predicted class, both in label_names order.
  """
  labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
  # labels= fixes the class set and order, so a class missing from both arrays still gets a row and column.
  labels = list(range(len(label_names)))
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels_true, labels_pred, labels=labels, zero_division=0)
  confusion = skm.confusion_matrix(labels_true, labels_pred, labels=labels)
  per_class = {
      name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
             "support": int(support[c])}
      for c, name in enumerate(label_names)
  }
  return {
      "accuracy": float(skm.accuracy_score(labels_true, labels_pred)),
      "macro_f1": float(skm.f1_score(labels_true, labels_pred, labels=labels, average="macro",
                                     zero_division=0)),
      "per_class": per_class,
      "confusion_matrix": confusion.astype(int).tolist(),
  }


def format_classification(report: dict) -> str:
  """Readable text: accuracy and macro-F1, a per-class table, and the confusion matrix (rows true)."""
  names = list(report["per_class"])
  width = max([len(n) for n in names] + [len("class")])
  lines = [f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}", "",
           f"{'class':<{width}}  precision  recall      f1  support"]
  for name, s in report["per_class"].items():
    lines.append(f"{name:<{width}}  {s['precision']:9.4f}  {s['recall']:6.4f}  {s['f1']:6.4f}  "
                 f"{s['support']:7d}")
  confusion = report["confusion_matrix"]
  # Each column is as wide as its class name or its largest count, whichever is longer.
  col = [max(len(n), *(len(str(row[j])) for row in confusion)) for j, n in enumerate(names)]
  lines += ["", "confusion matrix (rows: true, columns: predicted)",
            " " * width + "  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, col))]
  for name, row in zip(names, confusion):
    lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>{w}d}" for v, w in zip(row, col)))
  return "\n".join(lines)


def save_confusion_matrix(report: dict, path: str, title: str = "") -> None:
  """Writes a PNG heat map of report['confusion_matrix'] with counts in the cells and class names on axes."""
  # A bare Figure on an Agg canvas renders without a display and never touches pyplot's global backend
  # or figure registry, so callers with their own backend (or notebooks) are unaffected.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator

  names = list(report["per_class"])
  size = 2.0 + 0.6 * len(names)
  fig = Figure(figsize=(size + 1.0, size), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  display = skm.ConfusionMatrixDisplay(np.asarray(report["confusion_matrix"], int), display_labels=names)
  display.plot(ax=ax, cmap="Blues", colorbar=True)
  # Long or many class names overlap under the columns; slant them, anchored at their tick.
  if len(names) > 4 or max(map(len, names), default=0) > 8:
    for label in ax.get_xticklabels():
      label.set(rotation=45, ha="right", rotation_mode="anchor")
  display.im_.colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts, not fractions
  if title:
    ax.set_title(title)
  fig.savefig(path, format="png", dpi=120)


def generation_report(predictions: Sequence[str], references: Sequence[str]) -> dict:
  """Mean ROUGE-1/2/L F-measure x 100 (Porter-stemmed), corpus BLEU (sacrebleu) and the example count.

  Raises:
    ValueError: if predictions and references differ in length or are empty.
  """
  predictions, references = list(predictions), list(references)
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
  if not predictions:
    raise ValueError("generation_report needs at least one example")
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  # RougeScorer.score takes (target, prediction): the reference comes first.
  scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
  report = {k: 100.0 * float(np.mean([s[k].fmeasure for s in scores])) for k in ROUGE_TYPES}
  report["bleu"] = float(sacrebleu.corpus_bleu(predictions, [references]).score)
  report["count"] = len(predictions)
  return report


def format_generation(report: dict) -> str:
  """One line: ROUGE-1/2/L and BLEU."""
  return (f"ROUGE-1 {report['rouge1']:.2f}  ROUGE-2 {report['rouge2']:.2f}  ROUGE-L {report['rougeL']:.2f}  "
          f"BLEU {report['bleu']:.2f}  (n={report['count']})")
