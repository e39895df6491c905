"""The pretraining run: config -> data -> model and state -> train loop -> checkpoints, metrics, samples.

The loop stops early, with one clear message, on a signal (state saved at the next step boundary) or on a
non-finite loss or gradient norm (nothing saved after the last finite step).
"""

import contextlib
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from lmlab import config as config_lib
from lmlab import objectives
from lmlab.data import dedup, pipeline, shards, sources, tokenizer
from lmlab.decode import complete
from lmlab.errors import Diverged, Interrupted
from lmlab.train import checkpoint, hardware, logger, partitioning, signals, trainer, workdir
from lmlab.train.evaluate import describe, evaluate


def train_and_evaluate(cfg, on_eval=None) -> dict:
  """Runs (or resumes) pretraining in cfg.workdir and returns the summary written to metrics.json.
  on_eval(step, result): called after each periodic evaluation (a search's pruner; it may raise to stop)."""
  start_time = time.perf_counter()
  # --- Config, mesh and data source: every check before any compute or any file is written.
  config_lib.validate(cfg, jax.device_count(), jax.process_count())
  mesh = partitioning.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
  sources.check(cfg.data)
  with workdir.run_in(cfg) as run_dir, signals.StopRequests() as stop, contextlib.ExitStack() as cleanup:
    return _train(cfg, run_dir, mesh, stop, cleanup, start_time, on_eval)


def _train(cfg, run_dir: str, mesh, stop: signals.StopRequests, cleanup: contextlib.ExitStack,
           start_time: float, on_eval=None) -> dict:
  log = logger.MetricsLogger(run_dir, cfg.train.num_steps, cfg.data.batch_size * cfg.data.seq_len)
  log.print(f"Work directory: {os.path.abspath(run_dir)}")
  log.print(f"Mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
            f"{jax.process_count()} process(es)")

  # --- Input: tokenizer, this process's token shards of each split (prepared once in the data cache,
  # memory-mapped), the objective's rows over them, the resumable train stream.
  sp = workdir.load_tokenizer(cfg, run_dir, log.print)
  process = (jax.process_index(), jax.process_count())
  tokenizer_path = os.path.join(run_dir, "tokenizer.model")
  train_docs, train_counts = shards.split_documents(cfg, cfg.data.train_split, tokenizer_path, *process, log.print)
  eval_docs, _ = shards.split_documents(cfg, cfg.data.eval_split, tokenizer_path, *process, log.print)
  log.print(f"Data: {train_docs.num_tokens:,} train / {eval_docs.num_tokens:,} validation tokens (this "
            f"process), objective {cfg.objective.name}, rows of {cfg.data.seq_len}")
  log.print(tokenizer.check_unknown_rate(
      train_counts["unknown_tokens"] / max(train_counts["num_tokens"], 1), cfg.data.max_unknown_rate,
      "the training split", "Train the tokenizer on this data: use a new --workdir (its tokenizer.model comes "
      "from the training split), with config.tokenizer.character_coverage = 1.0 for a large alphabet."))
  objective = objectives.get(cfg.objective.name)
  data = objective.data(cfg, sp.vocab_size(), sp)
  train_rows, eval_rows = data.rows(train_docs), data.rows(eval_docs)
  novel_docs = dedup.novel_documents(cfg.data, train_docs, eval_docs, log.print)
  local_batch = cfg.data.batch_size // jax.process_count()

  # --- Model, optimizer and sharded state; resume from the latest checkpoint if there is one.
  trn = trainer.get_trainer(cfg, sp.vocab_size(), mesh)
  log.print(f"Model: {trn.param_count():,} parameters, {trn.flops_per_token() / 1e6:.1f} MFLOP/token")
  log.peak_flops, peak_source = hardware.peak_flops()
  log.flops_per_step = trn.flops_per_token() * cfg.data.batch_size * cfg.data.seq_len
  log.print(f"Peak for MFU: {peak_source}")
  state, manager = checkpoint.restore_latest_intact(run_dir, cfg.train.keep_checkpoints, trn.abstract_state, log)
  checkpoint.close_on_exit(cleanup, manager)
  if state is not None:
    log.print(f"Resumed from step {int(state.step)}")
  else:
    state = trn.init_state(jax.random.PRNGKey(cfg.seed))
  start_step = int(jax.device_get(state.step))
  train_iter = pipeline.train_batches(train_rows, local_batch, cfg.seed, start_step, jax.process_index(),
                                      cfg.data.prefetch, data.transform)
  # Made when evaluated: the batches are fixed (seeded by their index), whatever the step.
  eval_batches = pipeline.EvalBatches(eval_rows, local_batch, data.transform, cfg.seed)
  evaluate_now = lambda params: evaluate(trn, params, eval_batches, trn.eval_terms, cfg.train.eval_batches)

  # --- Train loop. Metrics of a log step are pulled to the host after the next step is dispatched; the
  # state's device-side flag says whether every loss and gradient norm so far was finite, read at log
  # steps and before every save (no extra host sync per step).
  record = {"name": cfg.name}
  pending = None  # (step, metrics, finite flag at that step)
  checked = start_step  # the last step known to be finite

  def flush():
    nonlocal pending
    if pending is not None:
      log.train_progress(*pending[:2])
      verify(pending[0], pending[2])
      pending = None

  def verify(step, flag):
    nonlocal checked
    if not bool(flag):
      saved = manager.latest_step()
      raise Diverged(f"training diverged: a loss or gradient norm became NaN or infinite between steps "
                     f"{checked + 1} and {step}; nothing after step {checked} was saved (latest checkpoint: "
                     f"{saved}). Lower config.optim.lr, keep config.optim.grad_clip > 0, or check the data.")
    checked = step

  def save(step):
    flush()
    verify(step, state.finite)
    checkpoint.save(manager, state, record)

  log.start(start_step)
  for step in range(start_step + 1, cfg.train.num_steps + 1):
    state, metrics = trn.train_step(state, partitioning.global_batch(next(train_iter), mesh))
    flush()
    if step % cfg.train.log_every == 0 or step == cfg.train.num_steps:
      pending = (step, metrics, metrics.pop("finite"))
    if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.num_steps:
      flush()
      verify(step, state.finite)
      result = evaluate_now(state.params)
      log.write(step, result, "eval")
      log.print(f"eval at step {step}: {describe(result)}")
      if on_eval:
        on_eval(step, result)
      log.start(step)
    if step % cfg.train.checkpoint_every == 0 and step != cfg.train.num_steps:
      save(step)
    if _stop_requested(stop, step, cfg.train.log_every) and step != cfg.train.num_steps:
      if manager.latest_step() != step:
        save(step)
      checkpoint.finish(manager)
      log.close()
      raise Interrupted(f"stopped by {stop.name or 'a signal'} at step {step}: saved checkpoint {step} in "
                        f"{run_dir}; run the same command to resume.", stop.signum or 15)
  flush()
  final_step = int(jax.device_get(state.step))
  if manager.latest_step() != final_step:
    save(final_step)

  # --- Final evaluation, metrics.json and samples.
  result = evaluate_now(state.params)
  log.write(final_step, result, "eval")
  log.print(f"final eval at step {final_step}: {describe(result)}")
  prompts = list(cfg.sample.prompts)  # none: no samples
  for prompt, text in zip(prompts, complete.complete(cfg, trn.model, state.params, sp, prompts, cfg.seed)
                          if prompts else []):
    log.print(f"sample: {prompt} -> {text}")
  checkpoint.finish(manager)
  summary = {"step": final_step, "validation": result, "parameters": trn.param_count(),
             "flops_per_token": trn.flops_per_token(), "wall_time_s": time.perf_counter() - start_time}
  if novel_docs is not None:
    novel = evaluate(trn, state.params, pipeline.EvalBatches(data.rows(novel_docs), local_batch, data.transform,
                                                             cfg.seed), trn.eval_terms)
    summary["validation_dedup"] = dict(novel, documents=novel_docs.num_docs)
    log.print(f"final eval without near-duplicates of training documents: {describe(novel)}")
  log.hparams(cfg.to_dict(), summary)
  workdir.write_json(run_dir, "metrics.json", summary)
  log.close()
  return summary


def _stop_requested(stop: signals.StopRequests, step: int, every: int) -> bool:
  """Whether a signal asked this run to stop; with several processes, whether any process got one (they
  agree every `every` steps, so that all of them save the same step)."""
  if jax.process_count() == 1:
    return stop.signum is not None
  if step % every:
    return False
  signums = multihost_utils.process_allgather(np.int32(stop.signum or 0))
  stop.signum = stop.signum or int(np.max(signums)) or None
  return stop.signum is not None
