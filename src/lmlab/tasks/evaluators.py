"""One evaluator per task kind (big_vision style): called with parameters and a split, it returns that
split's metrics; save_test_report writes a finished run's test artifacts (confusion matrix, or the test
predictions) to its work directory.
"""

import json
import os

import jax
import numpy as np

from lmlab.data.tokenizer import EOS_ID
from lmlab.decode import sampling, seq2seq
from lmlab.objectives.base import TOKENS
from lmlab.tasks import config as task_config
from lmlab.tasks import data, inputs, metrics, qa, qa_inputs
from lmlab.train import partitioning
from lmlab.train.evaluate import evaluate


def qa_windows(cfg, sp, split: data.Split) -> qa_inputs.Windows:
  t = cfg.task
  return qa_inputs.make_windows(sp, split, task_config.qa_mode(cfg), cfg.model.family, cfg.data.seq_len,
                                t.max_question_len, t.doc_stride, t.max_target_len, task_config.prefix_input(cfg))


def task_arrays(cfg, sp, kind: str, split: data.Split) -> dict:
  """A split's model arrays: one row per example (question answering: per context window)."""
  family, seq_len, prefix = cfg.model.family, cfg.data.seq_len, task_config.prefix_input(cfg)
  if kind == "classification":
    return inputs.classification_arrays(sp, split.texts, family, seq_len, split.labels, prefix, cfg.task.max_chunks)
  if kind == "generation":
    return inputs.generation_arrays(sp, split.texts, split.targets, family, seq_len, cfg.task.max_target_len, prefix)
  return qa_windows(cfg, sp, split).arrays


class Evaluator:
  """What every kind shares: a split's model arrays (built once per split) and this process's batches."""
  kind = ""

  def __init__(self, cfg, trn, sp):
    """trn: the run's train.trainer.Trainer; sp: its tokenizer."""
    self.cfg, self.trn, self.sp = cfg, trn, sp
    self._arrays = {}

  def arrays(self, split: data.Split) -> dict:
    if id(split) not in self._arrays:
      self._arrays[id(split)] = self.make_arrays(split)
    return self._arrays[id(split)]

  def make_arrays(self, split: data.Split) -> dict:
    return task_arrays(self.cfg, self.sp, self.kind, split)

  def logits(self, params, arrays: dict) -> np.ndarray:
    """The model's `logits` for every row of `arrays` (every process gets all of them)."""
    out = [np.asarray(self.trn.outputs(params, partitioning.global_batch(b, self.trn.mesh))["logits"])
           for b in self.local_batches(arrays)]
    return np.concatenate(out)[:inputs.num_examples(arrays)]

  def local_batches(self, arrays: dict) -> list[dict]:
    """This process's rows of every evaluation batch (padding rows have weight 0)."""
    return [inputs.take(arrays, inputs.local_rows(index, jax.process_index(), jax.process_count()))
            for index in inputs.eval_order(inputs.num_examples(arrays), self.cfg.data.batch_size)]


class ClassificationEvaluator(Evaluator):
  """Accuracy, macro-F1, per-class precision / recall / F1, confusion matrix and mean loss."""
  kind = "classification"

  def __init__(self, cfg, trn, sp, label_names: tuple[str, ...]):
    super().__init__(cfg, trn, sp)
    self.label_names = label_names

  def probabilities(self, params, arrays: dict) -> np.ndarray:
    """float [R, C] class probabilities of every example of `arrays`."""
    return np.asarray(jax.nn.softmax(self.logits(params, arrays), axis=-1))

  def __call__(self, params, split: data.Split, with_predictions: bool = False) -> dict:
    probs = self.probabilities(params, self.arrays(split))
    report = metrics.classification_report(split.labels, probs.argmax(-1), self.label_names)
    report["loss"] = float(-np.mean(np.log(np.maximum(probs[np.arange(len(probs)), split.labels], 1e-30))))
    if with_predictions:
      report["predictions"] = probs.argmax(-1).tolist()
    return report


class GenerationEvaluator(Evaluator):
  """ROUGE-1/2/L and BLEU of greedy (or beam) outputs, and the teacher-forced target loss / perplexity."""
  kind = "generation"

  def generate(self, params, sources: list[str]) -> list[str]:
    cfg = self.cfg
    prompts = inputs.prompts(self.sp, sources, cfg.model.family, cfg.data.seq_len, cfg.task.max_target_len)
    return [self.sp.decode(ids) for ids in decode(cfg, self.trn.model, params, prompts)]

  def __call__(self, params, split: data.Split, with_predictions: bool = False) -> dict:
    # Teacher-forced target loss and perplexity, as pretraining evaluates its targets.
    scores = evaluate(self.trn, params, self.local_batches(self.arrays(split)), (TOKENS,))
    predictions = self.generate(params, split.texts)
    report = dict(metrics.generation_report(predictions, split.targets), loss=scores["loss"],
                  perplexity=scores["perplexity"])
    if with_predictions:
      report["predictions"] = predictions
    return report


def decode(cfg, model, params, prompts: list[list[int]], min_new_tokens: int = 0) -> list[list[int]]:
  """Each prompt's output ids without EOS: greedy (no EOS before min_new_tokens tokens), or beam search
  with finetune.beam_size beams (where min_new_tokens does not apply)."""
  if cfg.model.family == "encoder_decoder":
    # Padded to the full row: one compiled shape for every call.
    prompts = [p + [0] * (cfg.data.seq_len - len(p)) for p in prompts]
    outputs = seq2seq.generate(model, params, prompts, max_len=cfg.task.max_target_len + 1,
                               rng=jax.random.PRNGKey(cfg.seed), eos_id=EOS_ID, temperature=0.0,
                               beam_size=cfg.finetune.beam_size, alpha=cfg.sample.length_penalty,
                               min_new_tokens=min_new_tokens)
  elif cfg.finetune.beam_size:
    outputs, _ = sampling.beam_search(model, params, prompts, max_new_tokens=cfg.task.max_target_len + 1,
                                      eos_id=EOS_ID, beam_size=cfg.finetune.beam_size,
                                      alpha=cfg.sample.length_penalty, prefix=task_config.prefix_input(cfg))
  else:
    outputs = sampling.sample(model, params, prompts, max_new_tokens=cfg.task.max_target_len + 1,
                              rng=jax.random.PRNGKey(cfg.seed), temperature=0.0, eos_id=EOS_ID,
                              prefix=task_config.prefix_input(cfg), min_new_tokens=min_new_tokens)
  return [[t for t in ids if t != EOS_ID] for ids in outputs]


class QaEvaluator(Evaluator):
  """Exact match and token F1 (SQuAD 2.0, tasks/qa.py) of the answers chosen over each question's context
  windows (tasks/qa_inputs.py), by span extraction or generation, and the teacher-forced window loss."""

  kind = "qa"
  DECODE_CHUNK = 256  # windows decoded per call: one compiled shape for all but a split's last chunk

  def __init__(self, cfg, trn, sp, validation: data.Split | None = None, threshold: float = 0.0):
    """validation: the split whose every evaluation re-tunes the null threshold (qa.best_threshold) used
    for the other splits; threshold: the one to start from (a finished run's, when predicting)."""
    super().__init__(cfg, trn, sp)
    self.validation, self.threshold = validation, threshold

  def make_arrays(self, split: data.Split) -> dict:
    return self.windows(split).arrays

  def windows(self, split: data.Split) -> qa_inputs.Windows:
    key = ("windows", id(split))
    if key not in self._arrays:
      self._arrays[key] = qa_windows(self.cfg, self.sp, split)
    return self._arrays[key]

  def answers(self, params, split: data.Split) -> list[str]:
    """The answer to each question ("" for none) at the evaluator's null threshold."""
    return qa_inputs.choose(*self.candidates(params, split), self.threshold)

  def candidates(self, params, split: data.Split) -> tuple[list[str], np.ndarray]:
    """Each question's candidate answer and its margin over no answer (tasks/qa_inputs.py)."""
    windows = self.windows(split)
    if task_config.qa_mode(self.cfg) == "span":
      logits = self.logits(params, windows.arrays)
      return qa_inputs.span_candidates(windows, split.contexts, logits, self.cfg.task.max_answer_len)
    outputs = []
    for at in range(0, len(windows.prompts), self.DECODE_CHUNK):
      chunk = windows.prompts[at:at + self.DECODE_CHUNK]
      padded = chunk + [chunk[0]] * (self.DECODE_CHUNK - len(chunk)) if at else chunk
      # An answer that ran out of room (no EOS in max_target_len + 1 tokens) is cut to the trained length.
      # Each window's candidate is a non-empty answer (EOS first is the no-answer score below), as
      # a span head's best span is never [CLS].
      decoded = decode(self.cfg, self.trn.model, params, padded, min_new_tokens=1)[:len(chunk)]
      outputs.extend(ids[:self.cfg.task.max_target_len] for ids in decoded)
    # Scores: log p(output + EOS) of each window's answer, and log p(EOS first) for no answer.
    answer_scores = self.log_probs(params, windows.prompts, [o + [EOS_ID] for o in outputs])
    null_scores = self.log_probs(params, windows.prompts, [[EOS_ID]] * len(outputs))
    answers, nulls = {}, {}
    for i, ids, score, null in zip(windows.example, outputs, answer_scores, null_scores):
      nulls[i] = min(nulls.get(i, np.inf), null)
      text = self.sp.decode(ids).strip()
      if text and score > answers.get(i, (-np.inf, ""))[0]:
        answers[i] = score, text
    return qa_inputs.candidates(answers, nulls, len(split))

  def log_probs(self, params, prompts: list[list[int]], outputs: list[list[int]]) -> np.ndarray:
    """float [W]: log p(outputs | prompts) under teacher forcing."""
    cfg = self.cfg
    arrays = inputs.generation_rows(prompts, outputs, cfg.model.family, cfg.data.seq_len, cfg.task.max_target_len,
                                    task_config.prefix_input(cfg))
    scores = [np.asarray(self.trn.target_log_probs(params, partitioning.global_batch(b, self.trn.mesh)))
              for b in self.local_batches(arrays)]
    return np.concatenate(scores)[:len(prompts)]

  def __call__(self, params, split: data.Split, with_predictions: bool = False) -> dict:
    """EM / F1 at the null threshold (tuned first when `split` is the validation split), at 0, and of the
    candidates themselves on the answerable questions (how well the model locates answers at all)."""
    scores = evaluate(self.trn, params, self.local_batches(self.arrays(split)), (TOKENS,))
    texts, margins = self.candidates(params, split)
    if split is self.validation:
      self.threshold = qa.best_threshold(texts, margins, split.answers)
    predictions = qa_inputs.choose(texts, margins, self.threshold)
    untuned = qa.qa_report(qa_inputs.choose(texts, margins, 0.0), split.answers)
    always = qa.qa_report(texts, split.answers)
    report = dict(qa.qa_report(predictions, split.answers), null_threshold=self.threshold, loss=scores["loss"],
                  exact_match_at_0=untuned["exact_match"], f1_at_0=untuned["f1"],
                  candidate_exact_match=always.get("has_answer_exact_match", 0.0),
                  candidate_f1=always.get("has_answer_f1", 0.0))
    if with_predictions:
      report["predictions"] = predictions
    return report


def save_test_report(kind: str, report: dict, split: data.Split, predictions, run_dir: str, title: str
                     ) -> list[str]:
  """Writes the test split's artifacts to run_dir: the confusion matrix PNG (classification), or
  test_predictions.jsonl (generation: {prediction, target, first 200 characters of the source} per
  example; question answering: {question, prediction, answers}). Returns the lines to print (the
  per-class report, or three reference / output pairs)."""
  if kind == "classification":
    metrics.save_confusion_matrix(report, os.path.join(run_dir, "confusion_matrix.png"), title)
    return [metrics.format_classification(report)]
  if predictions is None:
    return []
  if kind == "qa":
    with open(os.path.join(run_dir, "test_predictions.jsonl"), "w") as f:
      for question, answers, prediction in zip(split.texts, split.answers, predictions):
        f.write(json.dumps({"question": question, "prediction": prediction, "answers": answers}) + "\n")
    return [f"  question: {q}\n  answers: {' | '.join(a) or '(none)'}\n  predicted: {p or '(no answer)'}"
            for q, a, p in list(zip(split.texts, split.answers, predictions))[:3]]
  with open(os.path.join(run_dir, "test_predictions.jsonl"), "w") as f:
    for source, target, prediction in zip(split.texts, split.targets, predictions):
      f.write(json.dumps({"prediction": prediction, "target": target, "source": source[:200]}) + "\n")
  return [f"  reference: {t}\n  generated: {p}" for t, p in list(zip(split.targets, predictions))[:3]]


def for_task(cfg, trn, sp, kind: str, label_names: tuple[str, ...], validation: data.Split | None = None,
             threshold: float = 0.0) -> Evaluator:
  """The evaluator of a task kind ("classification", "generation" or "qa"; see QaEvaluator for
  validation and threshold)."""
  if kind == "classification":
    return ClassificationEvaluator(cfg, trn, sp, label_names)
  return QaEvaluator(cfg, trn, sp, validation, threshold) if kind == "qa" else GenerationEvaluator(cfg, trn, sp)


def describe(report: dict) -> str:
  """One line of a split's headline metrics."""
  loss = f"loss {report['loss']:.4f} | " if "loss" in report else ""  # the SVM baseline has none
  if "accuracy" in report:
    return f"{loss}accuracy {report['accuracy']:.4f} | macro-F1 {report['macro_f1']:.4f}"
  if "exact_match" in report:
    return f"{loss}{qa.format_qa(report)}"
  return f"{loss}{metrics.format_generation(report)}"
