"""Prediction from a finished fine-tuning run's work directory: each text's label with the class
probabilities (SVM scores for the TF-IDF baseline), its generated output, or (question answering) the
answer to each text, a question, about a given context ("" when the model finds none)."""

import json
import os

import jax

from lmlab.data import tokenizer
from lmlab.errors import CheckpointError, ConfigError
from lmlab.tasks import baseline, data, evaluators, inputs
from lmlab.tasks import config as task_config
from lmlab.train import checkpoint, partitioning, trainer, workdir


def predict_workdir(run_dir: str, texts: list[str], context: str | None = None) -> list[dict]:
  """{"label", "probabilities" | "scores"}, {"output"} or {"answer"} per text, from the run's best
  checkpoint; question answering needs the context the questions are about."""
  if not os.path.exists(os.path.join(run_dir, "task.json")):
    raise ConfigError(f"{run_dir} is not a fine-tuning work directory (no task.json); predict needs a run of "
                      "experiments/finetune.py.")
  if not os.path.exists(os.path.join(run_dir, "metrics.json")):
    raise ConfigError(f"{run_dir} has not finished fine-tuning (no metrics.json); run it to the end first.")
  if not texts:
    raise ConfigError("Nothing to predict: give --text or --input.")
  cfg = workdir.load_config(run_dir)
  with open(os.path.join(run_dir, "task.json")) as f:
    task_info = json.load(f)
  label_names = tuple(task_info["label_names"])
  if task_info["kind"] == "qa" and not (context or "").strip():
    raise ConfigError(f"{run_dir} answers questions about a context: give it with --context (the questions "
                      "with --text or --input).")
  if task_info["kind"] != "qa" and context is not None:
    raise ConfigError(f"--context is for question-answering runs; {run_dir} is a {task_info['kind']} run.")
  if cfg.finetune.baseline:
    return baseline.predict(cfg, run_dir, list(texts), label_names, context)
  sp = tokenizer.load(os.path.join(run_dir, "tokenizer.model"), cfg.tokenizer)
  cfg.data.batch_size = jax.device_count()
  span = task_info["kind"] == "qa" and task_config.qa_mode(cfg) == "span"
  trn = trainer.get_trainer(cfg, sp.vocab_size(), partitioning.data_parallel_mesh(), num_classes=len(label_names),
                            pooling=task_config.pooling(cfg), span=span, freeze_body=cfg.finetune.freeze_body)
  manager = checkpoint.make_manager(run_dir, cfg.finetune.keep_best, *task_config.metric(cfg))
  if manager.best_step() is None:
    raise CheckpointError(f"{run_dir} has no checkpoint; fine-tune first.")
  state, _ = checkpoint.restore(manager, trn.abstract_state, manager.best_step())
  manager.close()
  with open(os.path.join(run_dir, "metrics.json")) as f:  # the null threshold tuned on validation
    threshold = json.load(f)["validation"].get("null_threshold", 0.0)
  evaluate = evaluators.for_task(cfg, trn, sp, task_info["kind"], label_names, threshold=threshold)
  if task_info["kind"] == "generation":
    return [{"output": text} for text in evaluate.generate(state.params, list(texts))]
  if task_info["kind"] == "qa":
    questions = data.Split(texts=list(texts), labels=None, targets=[""] * len(texts), contexts=[context] * len(texts),
                           answers=[[""]] * len(texts), answer_starts=[-1] * len(texts))
    return [{"answer": answer} for answer in evaluate.answers(state.params, questions)]
  arrays = inputs.classification_arrays(sp, list(texts), cfg.model.family, cfg.data.seq_len,
                                        prefix=task_config.prefix_input(cfg), max_chunks=cfg.task.max_chunks)
  probs = evaluate.probabilities(state.params, arrays)
  return [{"label": label_names[int(p.argmax())], "probabilities": dict(zip(label_names, map(float, p)))}
          for p in probs]
