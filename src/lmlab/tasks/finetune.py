"""Fine-tuning run: task config -> task data -> pretrained (or fresh) body + task head -> train with early
stopping and keep-best checkpoints -> the best checkpoint on the test split -> metrics.json; and
prediction from a finished run's work directory.

One train step serves pretraining and fine-tuning: a classification batch carries `targets` [B] (labels)
and `weights` [B], a generation batch the token targets of the answer, and both go through
train/step.py unchanged.
"""

import json
import math
import os
import pickle
import shutil
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from lmlab import config as config_lib
from lmlab import models
from lmlab.config import ConfigError
from lmlab.data import tokenizer
from lmlab.data.tokenizer import EOS_ID
from lmlab.decode import sampling, seq2seq
from lmlab.tasks import baseline, data, inputs, metrics
from lmlab.tasks import config as task_config
from lmlab.train import checkpoint, logger, loop, partitioning, step, trainer

BASELINE_FILE = "baseline.pkl"


# ----------------------------------------------------------------------------------------------------
# Setup


def _num_steps(cfg, num_train: int) -> int:
  f = cfg.finetune
  steps = max(f.min_steps, math.ceil(f.epochs * num_train / cfg.data.batch_size))
  return min(steps, cfg.train.num_steps)


def default_workdir(cfg) -> str:
  """runs/<name>_<what is fine-tuned>[_f<label fraction>][_s<seed>], e.g. runs/finetune_topic_gpt_small
  (from runs/gpt_small), runs/finetune_topic_scratch_decoder_f0.1, runs/finetune_topic_tfidf_svm_s1."""
  if cfg.finetune.baseline:
    source = cfg.finetune.baseline
  elif cfg.init_from:
    pre_dir, pre_step = task_config.split_init_from(cfg.init_from)
    source = os.path.basename(os.path.abspath(pre_dir)) + (f"_step{pre_step}" if pre_step is not None else "")
  else:
    source = f"scratch_{cfg.model.family}"
  name = f"{cfg.name}_{source}"
  if cfg.task.label_fraction != 1.0:
    name += f"_f{cfg.task.label_fraction:g}"
  if cfg.seed:
    name += f"_s{cfg.seed}"
  return os.path.join("runs", name)


def _prepare_workdir(cfg, task: data.TaskData) -> str:
  workdir = cfg.workdir or default_workdir(cfg)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if os.path.exists(os.path.join(workdir, "metrics.json")) or (os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)):
    raise ConfigError(f"{workdir} already holds a fine-tuning run (fine-tuning does not resume: runs are short "
                      "and their best checkpoint is final). Use a new --workdir, or delete that one.")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json(indent=2))
    with open(os.path.join(workdir, "task.json"), "w") as f:
      json.dump({"name": task.name, "kind": task.kind, "label_names": list(task.label_names)}, f, indent=2)
  return workdir


def _tokenizer(cfg, workdir: str):
  """The pretrained run's tokenizer (copied into workdir, so the run stands alone), or for a
  from-scratch run one trained on cfg.data's corpus exactly as pretraining would."""
  path = os.path.join(workdir, "tokenizer.model")
  if cfg.init_from:
    source = os.path.join(task_config.split_init_from(cfg.init_from)[0], "tokenizer.model")
    if not os.path.exists(source):
      raise ConfigError(f"config.init_from = {cfg.init_from!r} has no tokenizer.model; its pretraining "
                        "did not get that far. Finish the pretraining run first.")
    if jax.process_index() == 0 and not os.path.exists(path):
      shutil.copyfile(source, path)
    try:
      return tokenizer.load_or_train(source, lambda: [], cfg.tokenizer)
    except ValueError as e:
      raise ConfigError(f"config.init_from = {cfg.init_from!r}: {e}") from e
  return loop.load_tokenizer(cfg, workdir)


def _task_model(cfg, vocab_size: int, num_classes: int):
  return models.build(cfg, vocab_size, num_classes, task_config.pooling(cfg), cfg.finetune.freeze_body)


def _transfer(cfg, trn: trainer.Trainer, state, vocab_size: int, log) -> step.TrainState:
  """The pretrained parameters in place of the task model's body (the head stays freshly initialized);
  a fresh optimizer state and step 0."""
  pre_cfg = task_config.pretrained_config(cfg.init_from)
  pre_dir, pre_step = task_config.split_init_from(cfg.init_from)
  pre_trn = trainer.Trainer(pre_cfg, vocab_size, trn.mesh)
  manager = checkpoint.make_manager(pre_dir, pre_cfg.train.keep_checkpoints)
  steps = manager.all_steps()
  if not steps or (pre_step is not None and pre_step not in steps):
    manager.close()
    raise checkpoint.CheckpointError(
        f"config.init_from = {cfg.init_from!r}: no checkpoint {'' if pre_step is None else f'at step {pre_step} '}"
        f"there (saved steps: {sorted(steps) or 'none'}). Pretrain first, or name a saved step.")
  pre_state, record = checkpoint.restore(manager, pre_trn.abstract_state, pre_step)
  manager.close()
  classifier = "body" in state.params
  target = flax.traverse_util.flatten_dict(state.params["body"] if classifier else state.params)
  source = flax.traverse_util.flatten_dict(pre_state.params)
  for key, value in target.items():
    if key not in source or source[key].shape != value.shape:
      raise ConfigError(f"The task model's parameter {'/'.join(key)} {value.shape} is not in the pretrained "
                        f"checkpoint of {cfg.init_from} with that shape; the architectures differ.")
  body = flax.traverse_util.unflatten_dict({key: source[key] for key in target})
  params = dict(state.params, body=body) if classifier else body
  dropped = sorted("/".join(k) for k in source if k not in target)
  log.print(f"Restored {len(target)} pretrained tensors from {pre_dir} step {record['step']}"
            + (f"; not used by the task: {', '.join(dropped)}" if dropped else "")
            + ("; new: head" if classifier else ""))
  fresh = jax.jit(lambda p: step.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=trn.tx.init(p)),
                  out_shardings=trn.state_sharding)
  return fresh(params)


# ----------------------------------------------------------------------------------------------------
# Evaluation


class Evaluator:
  """Metrics of a split for a parameter set: classification report (+ loss), or generation ROUGE/BLEU
  (+ teacher-forced target loss / perplexity)."""

  def __init__(self, cfg, trn: trainer.Trainer, sp, task: data.TaskData):
    self.cfg, self.trn, self.sp, self.task = cfg, trn, sp, task
    batch_sharding = partitioning.batch_sharding(trn.mesh)
    self._logits = jax.jit(lambda params, batch: models.apply(trn.model, {"params": params}, batch)["logits"],
                           in_shardings=(trn.state_sharding.params, batch_sharding),
                           out_shardings=partitioning.replicated(trn.mesh))
    self._arrays = {}

  def arrays(self, split: data.Split) -> dict:
    key = id(split)
    if key not in self._arrays:
      self._arrays[key] = task_arrays(self.cfg, self.sp, self.task, split)
    return self._arrays[key]

  def _local_batches(self, arrays: dict) -> list[dict]:
    """This process's rows of every evaluation batch (padding rows have weight 0)."""
    return [inputs.take(arrays, inputs.local_rows(index, jax.process_index(), jax.process_count()))
            for index in inputs.eval_order(inputs.num_examples(arrays), self.cfg.data.batch_size)]

  def class_probabilities(self, params, arrays: dict) -> np.ndarray:
    logits = np.concatenate([np.asarray(self._logits(params, partitioning.global_batch(b, self.trn.mesh)))
                             for b in self._local_batches(arrays)])
    logits = logits[:inputs.num_examples(arrays)]
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def generate(self, params, sources: list[str]) -> list[str]:
    cfg, model = self.cfg, self.trn.model
    prompts = inputs.prompts(self.sp, sources, cfg.model.family, cfg.data.seq_len, cfg.task.max_target_len)
    if cfg.model.family == "encoder_decoder":
      # Padded to the full row: one compiled shape for every call.
      prompts = [p + [0] * (cfg.data.seq_len - len(p)) for p in prompts]
      outputs = seq2seq.generate(model, params, prompts, max_len=cfg.task.max_target_len + 1,
                                 rng=jax.random.PRNGKey(cfg.seed), eos_id=EOS_ID, temperature=0.0,
                                 beam_size=cfg.finetune.beam_size, alpha=cfg.sample.length_penalty)
    else:
      outputs = sampling.sample(model, params, prompts, max_new_tokens=cfg.task.max_target_len + 1,
                                rng=jax.random.PRNGKey(cfg.seed), temperature=0.0, eos_id=EOS_ID)
    return [self.sp.decode([t for t in ids if t != EOS_ID]) for ids in outputs]

  def __call__(self, params, split: data.Split, with_predictions: bool = False) -> dict:
    arrays = self.arrays(split)
    if self.task.kind == "classification":
      probs = self.class_probabilities(params, arrays)
      report = metrics.classification_report(split.labels, probs.argmax(-1), self.task.label_names)
      report["loss"] = float(-np.mean(np.log(np.maximum(probs[np.arange(len(probs)), split.labels], 1e-30))))
      if with_predictions:
        report["predictions"] = probs.argmax(-1).tolist()
      return report
    # Teacher-forced target loss and perplexity, as pretraining evaluates its targets.
    scores = loop.evaluate(self.trn, params, self._local_batches(arrays), max_batches=0)
    predictions = self.generate(params, split.texts)
    report = dict(metrics.generation_report(predictions, split.targets), loss=scores["loss"],
                  perplexity=scores["perplexity"])
    if with_predictions:
      report["predictions"] = predictions
    return report


def task_arrays(cfg, sp, task: data.TaskData, split: data.Split) -> dict:
  if task.kind == "classification":
    return inputs.classification_arrays(sp, split.texts, cfg.model.family, cfg.data.seq_len, split.labels)
  return inputs.generation_arrays(sp, split.texts, split.targets, cfg.model.family, cfg.data.seq_len,
                                  cfg.task.max_target_len)


def describe(report: dict) -> str:
  loss = f"loss {report['loss']:.4f} | " if "loss" in report else ""  # the SVM baseline has none
  if "accuracy" in report:
    return f"{loss}accuracy {report['accuracy']:.4f} | macro-F1 {report['macro_f1']:.4f}"
  return f"{loss}{metrics.format_generation(report)}"


# ----------------------------------------------------------------------------------------------------
# The run


def run(cfg) -> dict:
  """Fine-tunes (or fits the baseline) in cfg.workdir and returns the summary written to metrics.json."""
  start_time = time.perf_counter()
  # --- Config, task data and work directory: every check before any compute.
  cfg = task_config.resolve(cfg)
  task_config.validate(cfg, jax.device_count(), jax.process_count())
  try:
    task = data.load_task(cfg)
  except ValueError as e:  # bad task data: one clear error, as for the config itself
    raise ConfigError(str(e)) from e
  cfg.train.num_steps = _num_steps(cfg, len(task.train))
  cfg.optim.warmup_steps = int(cfg.finetune.warmup_fraction * cfg.train.num_steps)
  metric_name, mode = task_config.metric(cfg)
  workdir = _prepare_workdir(cfg, task)
  log = logger.MetricsLogger(workdir, cfg.train.num_steps, cfg.data.batch_size * cfg.data.seq_len)
  log.print(f"Work directory: {os.path.abspath(workdir)}")
  log.print(f"Task {task.name} ({task.kind}): {len(task.train):,} train examples (label fraction "
            f"{cfg.task.label_fraction} of {task.train_size_full:,}), {len(task.validation):,} validation, "
            f"{len(task.test):,} test" + (f"; classes {', '.join(task.label_names)}" if task.label_names else ""))
  system = cfg.finetune.baseline or f"{cfg.model.family}/{cfg.objective.name}"
  summary = {"name": cfg.name, "task": task.name, "kind": task.kind, "system": system, "init_from": cfg.init_from,
             "label_fraction": cfg.task.label_fraction, "seed": cfg.seed, "train_examples": len(task.train),
             "metric": metric_name}
  if cfg.finetune.baseline:
    return _baseline_run(cfg, workdir, log, task, summary, start_time)

  # --- Tokenizer, model (pretrained body + new head, or from scratch), optimizer, sharded state.
  mesh = partitioning.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
  sp = _tokenizer(cfg, workdir)
  num_classes = len(task.label_names)
  model = _task_model(cfg, sp.vocab_size(), num_classes)
  trn = trainer.Trainer(cfg, sp.vocab_size(), mesh, model, cfg.finetune.layer_decay, cfg.finetune.freeze_body)
  state = trn.init_state(jax.random.PRNGKey(cfg.seed))
  if cfg.init_from:
    state = _transfer(cfg, trn, state, sp.vocab_size(), log)
  else:
    log.print("Training from scratch (config.init_from = None)")
  log.print(f"Model: {cfg.model.family} ({task_config.pooling(cfg) + ' pooling, ' if num_classes else ''}"
            f"{trn.param_count():,} parameters); {cfg.train.num_steps} steps of {cfg.data.batch_size}")
  evaluate = Evaluator(cfg, trn, sp, task)
  train_arrays = evaluate.arrays(task.train)
  order = inputs.train_order(len(task.train), cfg.data.batch_size, cfg.train.num_steps, cfg.seed)
  manager = checkpoint.make_manager(workdir, cfg.finetune.keep_best, metric_name, mode)

  # --- Train loop: evaluate every eval_every steps, keep the best checkpoints, stop early.
  better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
  best_value, stale = None, 0
  log.start(0)
  for step_num in range(1, cfg.train.num_steps + 1):
    local = inputs.local_rows(order[step_num - 1], jax.process_index(), jax.process_count())
    state, train_metrics = trn.train_step(state, partitioning.global_batch(inputs.take(train_arrays, local), mesh))
    if step_num % cfg.train.log_every == 0:
      log.train_progress(step_num, train_metrics)
    if step_num % cfg.train.eval_every and step_num != cfg.train.num_steps:
      continue
    result = evaluate(state.params, task.validation)
    value = result[metric_name]
    log.write(step_num, {k: v for k, v in result.items() if isinstance(v, float)}, "eval")
    log.print(f"validation at step {step_num}: {describe(result)}")
    checkpoint.save(manager, state, {"name": cfg.name}, {metric_name: value})
    if best_value is None or better(value, best_value):
      best_value, stale = value, 0
    else:
      stale += 1
      if cfg.finetune.patience and stale >= cfg.finetune.patience:
        log.print(f"Early stop at step {step_num}: no better validation {metric_name} for {stale} evaluations")
        break
    log.start(step_num)
  manager.wait_until_finished()

  # --- The best checkpoint on validation and test; reports, confusion matrix, metrics.json.
  state, _ = checkpoint.restore(manager, trn.abstract_state, manager.best_step())
  manager.close()
  summary.update(best_step=int(jax.device_get(state.step)), steps_run=step_num, parameters=trn.param_count())
  summary["validation"] = _without_predictions(evaluate(state.params, task.validation))
  test = evaluate(state.params, task.test, with_predictions=True)
  summary["test"] = _without_predictions(test)
  _report(cfg, workdir, log, task, summary, test.get("predictions"))
  summary["wall_time_s"] = time.perf_counter() - start_time
  _write_json(os.path.join(workdir, "metrics.json"), summary)
  log.close()
  return summary


def _without_predictions(report: dict) -> dict:
  return {k: v for k, v in report.items() if k != "predictions"}


def _report(cfg, workdir: str, log, task: data.TaskData, summary: dict, predictions) -> None:
  """Prints the test report; saves the confusion matrix PNG or the test predictions."""
  best = f"best step {summary['best_step']}: " if "best_step" in summary else ""
  log.print(f"{best}validation {describe(summary['validation'])}")
  log.print(f"test: {describe(summary['test'])}")
  if jax.process_index() != 0:
    return
  if task.kind == "classification":
    log.print(metrics.format_classification(summary["test"]))
    metrics.save_confusion_matrix(summary["test"], os.path.join(workdir, "confusion_matrix.png"),
                                  f"{cfg.name}: {task.name} test")
  elif predictions is not None:
    with open(os.path.join(workdir, "test_predictions.jsonl"), "w") as f:
      for source, target, prediction in zip(task.test.texts, task.test.targets, predictions):
        f.write(json.dumps({"prediction": prediction, "target": target, "source": source[:200]}) + "\n")
    for target, prediction in list(zip(task.test.targets, predictions))[:3]:
      log.print(f"  reference: {target}\n  generated: {prediction}")


def _write_json(path: str, value) -> None:
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(value, f, indent=2)


def _baseline_run(cfg, workdir: str, log, task: data.TaskData, summary: dict, start_time: float) -> dict:
  """The non-neural baseline on the same task, split, label fraction and seed: TF-IDF + linear SVM (C
  chosen on validation) for classification, the lead (first words of the source) for generation."""
  predictions = None
  if cfg.finetune.baseline == "lead":
    words = baseline.lead_words(task.train.targets)
    log.print(f"Lead baseline: the first {words} words of each source (the median training target length)")
    summary["baseline"] = {"method": "lead", "words": words}
    for name, split in (("validation", task.validation), ("test", task.test)):
      outputs = baseline.lead(split.texts, words)
      summary[name] = metrics.generation_report(outputs, split.targets)
    predictions = outputs
  else:
    pipeline, info = baseline.fit_tfidf_svm(task.train.texts, task.train.labels, task.validation.texts,
                                            task.validation.labels, cfg.seed)
    log.print(f"TF-IDF + linear SVM: C = {info['C']} (validation accuracy by C: {info['validation_accuracy_by_C']})")
    summary["baseline"] = dict(info, method="tfidf_svm")
    for name, split in (("validation", task.validation), ("test", task.test)):
      scores = baseline.class_scores(pipeline, split.texts, len(task.label_names))
      summary[name] = metrics.classification_report(split.labels, scores.argmax(-1), task.label_names)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, BASELINE_FILE), "wb") as f:
        pickle.dump(pipeline, f)
  _report(cfg, workdir, log, task, summary, predictions)
  summary["wall_time_s"] = time.perf_counter() - start_time
  _write_json(os.path.join(workdir, "metrics.json"), summary)
  log.close()
  return summary


# ----------------------------------------------------------------------------------------------------
# Prediction


def predict_workdir(workdir: str, texts: list[str]) -> list[dict]:
  """Each text's predicted label with the class probabilities (the baseline gives SVM scores), or its
  generated output, from the best checkpoint of a finished fine-tuning run."""
  paths = {name: os.path.join(workdir, name) for name in ("config.json", "task.json", "metrics.json")}
  if not os.path.exists(paths["task.json"]):
    raise ConfigError(f"{workdir} is not a fine-tuning work directory (no task.json); predict needs a run of "
                      "experiments/finetune.py.")
  if not os.path.exists(paths["metrics.json"]):
    raise ConfigError(f"{workdir} has not finished fine-tuning (no metrics.json); run it to the end first.")
  if not texts:
    raise ConfigError("Nothing to predict: give --text or --input.")
  cfg = loop.load_config(workdir)
  with open(paths["task.json"]) as f:
    task_info = json.load(f)
  label_names = tuple(task_info["label_names"])
  if cfg.finetune.baseline == "lead":
    with open(paths["metrics.json"]) as f:
      words = json.load(f)["baseline"]["words"]
    return [{"output": text} for text in baseline.lead(texts, words)]
  if cfg.finetune.baseline:
    with open(os.path.join(workdir, BASELINE_FILE), "rb") as f:
      pipeline = pickle.load(f)
    scores = baseline.class_scores(pipeline, texts, len(label_names))
    return [{"label": label_names[int(s.argmax())], "scores": dict(zip(label_names, map(float, s)))}
            for s in scores]
  sp = tokenizer.load_or_train(os.path.join(workdir, "tokenizer.model"), lambda: [], cfg.tokenizer)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1  # prediction needs no model parallelism
  cfg.data.batch_size = jax.device_count()
  mesh = partitioning.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
  trn = trainer.Trainer(cfg, sp.vocab_size(), mesh, _task_model(cfg, sp.vocab_size(), len(label_names)))
  manager = checkpoint.make_manager(workdir, cfg.finetune.keep_best, *task_config.metric(cfg))
  if manager.best_step() is None:
    raise checkpoint.CheckpointError(f"{workdir} has no checkpoint; fine-tune first.")
  state, _ = checkpoint.restore(manager, trn.abstract_state, manager.best_step())
  manager.close()
  task = data.TaskData(task_info["name"], task_info["kind"], label_names, None, None, None, 0)
  evaluate = Evaluator(cfg, trn, sp, task)
  if task.kind == "generation":
    return [{"output": text} for text in evaluate.generate(state.params, list(texts))]
  arrays = inputs.classification_arrays(sp, list(texts), cfg.model.family, cfg.data.seq_len)
  probs = evaluate.class_probabilities(state.params, arrays)
  return [{"label": label_names[int(p.argmax())], "probabilities": dict(zip(label_names, map(float, p)))}
          for p in probs]
