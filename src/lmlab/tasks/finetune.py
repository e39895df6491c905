"""Fine-tuning run: task config -> task data -> pretrained (or fresh) body + task head -> train with
keep-best checkpoints (and optional early stopping) -> the best checkpoint on the test split ->
metrics.json. The baselines run through the same harness (tasks/baseline.py).

One train step serves pretraining and fine-tuning: a classification batch carries `targets` [B] (labels)
and `weights` [B], a generation batch the token targets of the answer, and both go through
train/step.py unchanged.
"""

import contextlib
import json
import math
import os
import shutil
import time

import jax

from lmlab import config as config_lib
from lmlab import models
from lmlab.data import sources, tokenizer
from lmlab.errors import ConfigError, Diverged, Interrupted
from lmlab.objectives.base import TOKENS
from lmlab.tasks import baseline, data, evaluators, inputs
from lmlab.tasks import config as task_config
from lmlab.train import checkpoint, logger, partitioning, signals, trainer, workdir


def schedule_steps(cfg, num_train: int) -> tuple[int, int]:
  """(updates, warmup updates) of a run on num_train training rows (examples; question answering: context
  windows): finetune.epochs over them, at least finetune.min_steps and at most train.num_steps updates;
  warmup is finetune.warmup_fraction of them."""
  f = cfg.finetune
  steps = min(max(f.min_steps, math.ceil(f.epochs * num_train / cfg.data.batch_size)), cfg.train.num_steps)
  return steps, int(f.warmup_fraction * steps)


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


# What a resumed fine-tuning run must share with the run that started its work directory.
FROZEN_ON_RESUME = workdir.FROZEN_ON_RESUME + ("init_from", "task", "finetune", "optim", "train.num_steps",
                                               "train.eval_every", "data.batch_size")


def _check_unfinished(run_dir: str) -> None:
  if os.path.exists(os.path.join(run_dir, "metrics.json")):
    raise ConfigError(f"{run_dir} holds a finished fine-tuning run; predict with it (launch.py predict "
                      f"--workdir {run_dir}), or use a new --workdir.")


def _tokenizer(cfg, run_dir: str):
  """The pretrained run's tokenizer (copied into run_dir, so the run stands alone), or for a
  from-scratch run one trained on cfg.data's corpus exactly as pretraining would."""
  if not cfg.init_from:
    return workdir.load_tokenizer(cfg, run_dir)
  source = os.path.join(task_config.split_init_from(cfg.init_from)[0], "tokenizer.model")
  if not os.path.exists(source):
    raise ConfigError(f"config.init_from = {cfg.init_from!r} has no tokenizer.model; its pretraining "
                      "did not get that far. Finish the pretraining run first.")
  path = os.path.join(run_dir, "tokenizer.model")
  if jax.process_index() == 0 and not os.path.exists(path):
    shutil.copyfile(source, path)
  try:
    return tokenizer.load(source, cfg.tokenizer)
  except ValueError as e:
    raise ConfigError(f"config.init_from = {cfg.init_from!r}: {e}") from e


def _task_tokenizer(cfg, task: data.TaskData) -> bytes | None:
  """config.task.tokenizer = "task": a tokenizer trained on all of the task's training texts (None when the
  work directory has one already: a resumed run keeps it). Sets cfg.tokenizer.vocab_size to its size."""
  run_dir = cfg.workdir or default_workdir(cfg)
  path = os.path.join(run_dir, "tokenizer.model")
  if os.path.exists(path):
    cfg.tokenizer.vocab_size = tokenizer.piece_count(path)
    return None
  texts = task.train_texts_full + (list(task.train.targets or []) if task.kind == "generation" else [])
  model = tokenizer.train_model(texts, cfg.tokenizer, fit_vocab=True)
  cfg.tokenizer.vocab_size = tokenizer.piece_count(model)
  return model


def start_from_pretrained(cfg, trn: trainer.Trainer, state, vocab_size: int, log):
  """The pretrained parameters in place of the task model's body (the head stays freshly initialized);
  a fresh optimizer state and step 0."""
  pre_cfg = task_config.pretrained_config(cfg.init_from)
  pre_dir, pre_step = task_config.split_init_from(cfg.init_from)
  pre_trn = trainer.get_trainer(pre_cfg, vocab_size, trn.mesh)
  pretrained, step = checkpoint.restore_params(pre_dir, pre_trn.abstract_state, pre_step)
  params, restored, dropped = models.transfer(state.params, pretrained, f"the checkpoint of {cfg.init_from}")
  new = [k for k in params if k != "body" and params[k] is state.params[k]]  # what transfer left as it was
  log.print(f"Restored {restored} pretrained tensors from {pre_dir} step {step}"
            + (f"; not used by the task: {', '.join(dropped)}" if dropped else "")
            + (f"; new: {', '.join(new)}" if "body" in params else ""))
  return trn.fresh_state(params)


def run(cfg, on_eval=None) -> dict:
  """Fine-tunes (or fits the baseline) in cfg.workdir and returns the summary written to metrics.json.
  on_eval(step, result): called after each validation (a search's pruner; it may raise to stop)."""
  start_time = time.perf_counter()
  # --- Config, task data and work directory: every check before any compute.
  cfg = task_config.resolve(cfg)
  task_config.validate(cfg, jax.device_count(), jax.process_count())
  try:
    task = data.load_task(cfg)
  except ValueError as e:  # bad task data: one clear error, as for the config itself
    raise ConfigError(str(e)) from e
  task_tokenizer = None
  if not cfg.init_from and not cfg.finetune.baseline:
    if cfg.task.tokenizer == "task":
      task_tokenizer = _task_tokenizer(cfg, task)  # and cfg.tokenizer.vocab_size set to its pieces
    else:
      sources.check(cfg.data)  # the tokenizer is trained on cfg.data's corpus
  run_dir = cfg.workdir or default_workdir(cfg)
  _check_unfinished(run_dir)
  with (workdir.run_in(cfg, run_dir, frozen=FROZEN_ON_RESUME) as run_dir, signals.StopRequests() as stop,
        contextlib.ExitStack() as cleanup):
    _check_unfinished(run_dir)  # again under the lock: another run may have finished there meanwhile
    workdir.write_json(run_dir, "task.json",
                       {"name": task.name, "kind": task.kind, "label_names": list(task.label_names)})
    path = os.path.join(run_dir, "tokenizer.model")
    if task_tokenizer is not None and jax.process_index() == 0 and not os.path.exists(path):
      tokenizer.save_model(path, task_tokenizer)
    return _finetune(cfg, task, run_dir, stop, cleanup, start_time, on_eval)


def _finetune(cfg, task: data.TaskData, run_dir: str, stop: signals.StopRequests, cleanup: contextlib.ExitStack,
              start_time: float, on_eval=None) -> dict:
  metric_name, mode = task_config.metric(cfg)
  log = logger.MetricsLogger(run_dir, 0, cfg.data.batch_size * cfg.data.seq_len)  # its length comes later
  log.print(f"Work directory: {os.path.abspath(run_dir)}")
  log.print(f"Task {task.name} ({task.kind}): {len(task.train):,} train examples (label fraction "
            f"{cfg.task.label_fraction} of {task.train_size_full:,}), {len(task.validation):,} validation, "
            f"{len(task.test):,} test" + (f"; classes {', '.join(task.label_names)}" if task.label_names else ""))
  system = cfg.finetune.baseline or f"{cfg.model.family}/{cfg.objective.name}"
  summary = {"name": cfg.name, "task": task.name, "kind": task.kind, "system": system, "init_from": cfg.init_from,
             "label_fraction": cfg.task.label_fraction, "seed": cfg.seed, "train_examples": len(task.train),
             "metric": metric_name}
  if cfg.finetune.baseline:
    results, predictions = baseline.fit_and_evaluate(cfg, task, run_dir, log)
    summary.update(results)
    return _finish(cfg, summary, run_dir, log, task, predictions, start_time)

  # --- Tokenizer, model (pretrained body + new head, or from scratch), optimizer, sharded state.
  mesh = partitioning.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
  sp = _tokenizer(cfg, run_dir)
  fix = ("The pretrained run's tokenizer does not cover this task's text: pretrain on text like it." if cfg.init_from
         else "Train the tokenizer on the task's own texts: --config.task.tokenizer=task.")
  texts = list(task.train.texts) + sorted(set(task.train.contexts or ()))
  log.print(tokenizer.check_unknown_rate(tokenizer.unknown_rate(sp.encode(texts)),
                                         cfg.data.max_unknown_rate, "the task's training texts", fix))
  num_classes = len(task.label_names)
  span = task.kind == "qa" and task_config.qa_mode(cfg) == "span"
  train_arrays = evaluators.task_arrays(cfg, sp, task.kind, task.train)
  num_steps, warmup_steps = schedule_steps(cfg, inputs.num_examples(train_arrays))
  log.num_steps = num_steps
  trn = trainer.get_trainer(cfg, sp.vocab_size(), mesh, num_classes=num_classes, pooling=task_config.pooling(cfg),
                            span=span, freeze_body=cfg.finetune.freeze_body, layer_decay=cfg.finetune.layer_decay,
                            num_steps=num_steps, warmup_steps=warmup_steps, loss_terms=(TOKENS,))
  better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
  # The latest state, saved at every evaluation (and on a stop signal), beside the keep-best checkpoints:
  # a killed or preempted run resumes from it with the same batches, dropout keys and keep-best state.
  resume = checkpoint.close_on_exit(cleanup, checkpoint.make_manager(os.path.join(run_dir, "resume"), 1))
  state = trn.init_state(jax.random.PRNGKey(cfg.seed))
  if resume.latest_step() is not None:
    state, _ = checkpoint.restore(resume, trn.abstract_state)
    log.print(f"Resumed from step {int(state.step)}")
  elif cfg.init_from:
    state = start_from_pretrained(cfg, trn, state, sp.vocab_size(), log)
  else:
    log.print("Training from scratch (config.init_from = None)")
  start_step = int(jax.device_get(state.step))
  best_value, stale = _replay_evaluations(run_dir, start_step, metric_name, better)
  head = f"{task_config.pooling(cfg)} pooling, " if num_classes else ("span head, " if span else "")
  windows = f" over {inputs.num_examples(train_arrays):,} context windows" if task.kind == "qa" else ""
  log.print(f"Model: {cfg.model.family} ({head}"
            f"{trn.param_count():,} parameters); {num_steps} steps of {cfg.data.batch_size}{windows}")
  evaluate = evaluators.for_task(cfg, trn, sp, task.kind, task.label_names, validation=task.validation)
  order = inputs.train_order(inputs.num_examples(train_arrays), cfg.data.batch_size, num_steps, cfg.seed)
  manager = checkpoint.close_on_exit(cleanup, checkpoint.make_manager(run_dir, cfg.finetune.keep_best, metric_name,
                                                                     mode))

  # --- Train loop: evaluate every eval_every steps, keep the best checkpoints, stop early.
  patience = cfg.finetune.patience
  step_num = start_step
  last_step = start_step if patience and stale >= patience else num_steps  # it died after an early stop
  log.start(start_step)
  for step_num in range(start_step + 1, last_step + 1):
    if stop.signum is not None:  # at a step boundary: save where we are and stop
      checkpoint.save(resume, state, {"name": cfg.name})
      checkpoint.finish(resume)
      manager.close()
      log.close()
      raise Interrupted(f"stopped by {stop.name} at step {int(jax.device_get(state.step))}: saved in {run_dir}; "
                        "run the same command to resume.", stop.signum)
    local = inputs.local_rows(order[step_num - 1], jax.process_index(), jax.process_count())
    state, train_metrics = trn.train_step(state, partitioning.global_batch(inputs.take(train_arrays, local), mesh))
    finite = train_metrics.pop("finite")  # every loss and gradient norm so far
    if step_num % cfg.train.log_every == 0:
      log.train_progress(step_num, train_metrics)
      _check_finite(finite, step_num, manager)
    if step_num % cfg.train.eval_every and step_num != num_steps:
      continue
    _check_finite(finite, step_num, manager)  # before the evaluation and its saves
    result = evaluate(state.params, task.validation)
    value = result[metric_name]
    log.write(step_num, {k: v for k, v in result.items() if isinstance(v, float)}, "eval")
    log.print(f"validation at step {step_num}: {evaluators.describe(result)}")
    if step_num not in manager.all_steps():  # a resumed run may have saved this step before it died
      checkpoint.save(manager, state, {"name": cfg.name}, {metric_name: value})
    checkpoint.save(resume, state, {"name": cfg.name})
    best_value, stale = _update_best(best_value, stale, value, better)
    if on_eval:
      on_eval(step_num, result)
    if patience and stale >= patience:
      log.print(f"Early stop at step {step_num}: no better validation {metric_name} for {stale} evaluations")
      break
    log.start(step_num)
  checkpoint.finish(resume)
  manager.wait_until_finished()

  # --- The best checkpoint on validation and test.
  state, _ = checkpoint.restore(manager, trn.abstract_state, manager.best_step())
  manager.close()
  summary.update(best_step=int(jax.device_get(state.step)), steps_run=step_num, num_steps=num_steps,
                 warmup_steps=warmup_steps, parameters=trn.param_count(), vocab_size=sp.vocab_size())
  summary["validation"] = _without_predictions(evaluate(state.params, task.validation))
  test = evaluate(state.params, task.test, with_predictions=True)
  summary["test"] = _without_predictions(test)
  return _finish(cfg, summary, run_dir, log, task, test.get("predictions"), start_time)


def _check_finite(finite, step: int, manager) -> None:
  if not bool(finite):
    saved = max(manager.all_steps(), default=None)
    raise Diverged(f"fine-tuning diverged: a loss or gradient norm became NaN or infinite by step {step}; "
                   f"nothing after the evaluation at step {saved} was saved. Lower config.optim.lr or keep "
                   "config.optim.grad_clip > 0.")


def _update_best(best_value, stale: int, value, better) -> tuple:
  """(best validation value, evaluations since it) after an evaluation giving `value`."""
  if best_value is None or better(value, best_value):
    return value, 0
  return best_value, stale + 1


def _replay_evaluations(run_dir: str, step: int, metric_name: str, better) -> tuple:
  """The keep-best state (best value, evaluations since) at `step`, from the evaluations up to it in
  metrics.jsonl (a run that died after `step` may have logged later ones: they are ignored)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  values = {}
  if step and os.path.exists(path):
    with open(path) as f:
      for row in map(json.loads, f):
        if row["split"] == "eval" and row["step"] <= step:
          values[row["step"]] = row[metric_name]
  best_value, stale = None, 0
  for value in (values[s] for s in sorted(values)):
    best_value, stale = _update_best(best_value, stale, value, better)
  return best_value, stale


def _without_predictions(report: dict) -> dict:
  return {k: v for k, v in report.items() if k != "predictions"}


def _finish(cfg, summary: dict, run_dir: str, log, task: data.TaskData, predictions, start_time: float) -> dict:
  """Prints the validation and test reports, saves the test artifacts and metrics.json."""
  best = f"best step {summary['best_step']}: " if "best_step" in summary else ""
  log.print(f"{best}validation {evaluators.describe(summary['validation'])}")
  log.print(f"test: {evaluators.describe(summary['test'])}")
  if jax.process_index() == 0:
    for line in evaluators.save_test_report(task.kind, summary["test"], task.test, predictions, run_dir,
                                            f"{summary['name']}: {task.name} test"):
      log.print(line)
  summary["wall_time_s"] = time.perf_counter() - start_time
  log.hparams(cfg.to_dict(), summary)
  workdir.write_json(run_dir, "metrics.json", summary)
  log.close()
  return summary
