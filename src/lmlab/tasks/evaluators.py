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
from lmlab.tasks import data, inputs, metrics
from lmlab.train import partitioning
from lmlab.train.evaluate import evaluate


class Evaluator:
  """What both kinds share: a split's model arrays (built once per split) and this process's batches."""

  def __init__(self, cfg, trn, sp):
    """trn: the run's train.trainer.Trainer; sp: its tokenizer."""
    self.cfg, self.trn, self.sp = cfg, trn, sp
    self._arrays = {}

  def arrays(self, split: data.Split) -> dict:
    if id(split) not in self._arrays:
      self._arrays[id(split)] = self.make_arrays(split)
    return self._arrays[id(split)]

  def make_arrays(self, split: data.Split) -> dict:
    raise NotImplementedError

  def local_batches(self, arrays: dict) -> list[dict]:
    """This process's rows of every evaluation batch (padding rows have weight 0)."""
    return [inputs.take(arrays, inputs.local_rows(index, jax.process_index(), jax.process_count()))
            for index in inputs.eval_order(inputs.num_examples(arrays), self.cfg.data.batch_size)]


class ClassificationEvaluator(Evaluator):
  """Accuracy, macro-F1, per-class precision / recall / F1, confusion matrix and mean loss."""

  def __init__(self, cfg, trn, sp, label_names: tuple[str, ...]):
    super().__init__(cfg, trn, sp)
    self.label_names = label_names

  def make_arrays(self, split: data.Split) -> dict:
    return inputs.classification_arrays(self.sp, split.texts, self.cfg.model.family, self.cfg.data.seq_len,
                                        split.labels, task_config.prefix_input(self.cfg))

  def probabilities(self, params, arrays: dict) -> np.ndarray:
    """float [R, C] class probabilities of every example of `arrays`."""
    logits = np.concatenate([np.asarray(self.trn.outputs(params, partitioning.global_batch(b, self.trn.mesh))["logits"])
                             for b in self.local_batches(arrays)])
    logits = logits[:inputs.num_examples(arrays)]
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def __call__(self, params, split: data.Split, with_predictions: bool = False) -> dict:
    probs = self.probabilities(params, self.arrays(split))
    report = metrics.classification_report(split.labels, probs.argmax(-1), self.label_names)
    report["loss"] = float(-np.mean(np.log(np.maximum(probs[np.arange(len(probs)), split.labels], 1e-30))))
    if with_predictions:
      report["predictions"] = probs.argmax(-1).tolist()
    return report


class GenerationEvaluator(Evaluator):
  """ROUGE-1/2/L and BLEU of greedy (or beam) outputs, and the teacher-forced target loss / perplexity."""

  def make_arrays(self, split: data.Split) -> dict:
    cfg = self.cfg
    return inputs.generation_arrays(self.sp, split.texts, split.targets, cfg.model.family, cfg.data.seq_len,
                                    cfg.task.max_target_len, task_config.prefix_input(cfg))

  def generate(self, params, sources: list[str]) -> list[str]:
    cfg, model = self.cfg, self.trn.model
    prompts = inputs.prompts(self.sp, sources, cfg.model.family, cfg.data.seq_len, cfg.task.max_target_len)
    if cfg.model.family == "encoder_decoder":
      # Padded to the full row: one compiled shape for every call.
      prompts = [p + [0] * (cfg.data.seq_len - len(p)) for p in prompts]
      outputs = seq2seq.generate(model, params, prompts, max_len=cfg.task.max_target_len + 1,
                                 rng=jax.random.PRNGKey(cfg.seed), eos_id=EOS_ID, temperature=0.0,
                                 beam_size=cfg.finetune.beam_size, alpha=cfg.sample.length_penalty)
    elif cfg.finetune.beam_size:
      outputs, _ = sampling.beam_search(model, params, prompts, max_new_tokens=cfg.task.max_target_len + 1,
                                        eos_id=EOS_ID, beam_size=cfg.finetune.beam_size,
                                        alpha=cfg.sample.length_penalty, prefix=task_config.prefix_input(cfg))
    else:
      outputs = sampling.sample(model, params, prompts, max_new_tokens=cfg.task.max_target_len + 1,
                                rng=jax.random.PRNGKey(cfg.seed), temperature=0.0, eos_id=EOS_ID,
                                prefix=task_config.prefix_input(cfg))
    return [self.sp.decode([t for t in ids if t != EOS_ID]) for ids in outputs]

  def __call__(self, params, split: data.Split, with_predictions: bool = False) -> dict:
    # Teacher-forced target loss and perplexity, as pretraining evaluates its targets.
    scores = evaluate(self.trn, params, self.local_batches(self.arrays(split)), (TOKENS,))
    predictions = self.generate(params, split.texts)
    report = dict(metrics.generation_report(predictions, split.targets), loss=scores["loss"],
                  perplexity=scores["perplexity"])
    if with_predictions:
      report["predictions"] = predictions
    return report


def save_test_report(kind: str, report: dict, split: data.Split, predictions, run_dir: str, title: str
                     ) -> list[str]:
  """Writes the test split's artifacts to run_dir: the confusion matrix PNG (classification), or
  test_predictions.jsonl (generation: {prediction, target, first 200 characters of the source} per
  example). Returns the lines to print (the per-class report, or three reference / output pairs)."""
  if kind == "classification":
    metrics.save_confusion_matrix(report, os.path.join(run_dir, "confusion_matrix.png"), title)
    return [metrics.format_classification(report)]
  if predictions is None:
    return []
  with open(os.path.join(run_dir, "test_predictions.jsonl"), "w") as f:
    for source, target, prediction in zip(split.texts, split.targets, predictions):
      f.write(json.dumps({"prediction": prediction, "target": target, "source": source[:200]}) + "\n")
  return [f"  reference: {t}\n  generated: {p}" for t, p in list(zip(split.targets, predictions))[:3]]


def for_task(cfg, trn, sp, kind: str, label_names: tuple[str, ...]) -> Evaluator:
  """The evaluator of a task kind ("classification" or "generation")."""
  if kind == "classification":
    return ClassificationEvaluator(cfg, trn, sp, label_names)
  return GenerationEvaluator(cfg, trn, sp)


def describe(report: dict) -> str:
  """One line of a split's headline metrics."""
  loss = f"loss {report['loss']:.4f} | " if "loss" in report else ""  # the SVM baseline has none
  if "accuracy" in report:
    return f"{loss}accuracy {report['accuracy']:.4f} | macro-F1 {report['macro_f1']:.4f}"
  return f"{loss}{metrics.format_generation(report)}"
