"""The pretraining run: config -> data -> model and state -> train loop -> checkpoints, metrics, samples."""

import os
import time

import jax

from lmlab import config as config_lib
from lmlab import objectives
from lmlab.data import pipeline, sources
from lmlab.decode import complete
from lmlab.train import checkpoint, logger, partitioning, trainer, workdir
from lmlab.train.evaluate import describe, evaluate


def train_and_evaluate(cfg) -> dict:
  """Runs (or resumes) pretraining in cfg.workdir and returns the summary written to metrics.json."""
  start_time = time.perf_counter()
  # --- Config and mesh: every check before any compute.
  config_lib.validate(cfg, jax.device_count(), jax.process_count())
  mesh = partitioning.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
  sources.check(cfg.data)  # a bad data source fails before the work directory exists
  run_dir = workdir.prepare(cfg)
  log = logger.MetricsLogger(run_dir, cfg.train.num_steps, cfg.data.batch_size * cfg.data.seq_len)
  log.print(f"Work directory: {os.path.abspath(run_dir)}")
  log.print(f"Mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
            f"{jax.process_count()} process(es)")

  # --- Input: tokenizer, the objective's rows, the resumable train stream.
  sp = workdir.load_tokenizer(cfg, run_dir)
  process = (jax.process_index(), jax.process_count())
  train_docs = sources.encoded_documents(cfg.data, sp, cfg.data.train_split, *process)
  eval_docs = sources.encoded_documents(cfg.data, sp, cfg.data.eval_split, *process)
  log.print(f"Data: {sum(map(len, train_docs)):,} train / {sum(map(len, eval_docs)):,} validation tokens "
            f"(this process), objective {cfg.objective.name}, rows of {cfg.data.seq_len}")
  objective = objectives.get(cfg.objective.name)
  data = objective.data(cfg, sp.vocab_size(), sp)
  train_rows, eval_rows = data.rows(train_docs), data.rows(eval_docs)
  local_batch = cfg.data.batch_size // jax.process_count()

  # --- Model, optimizer and sharded state; resume from the latest checkpoint if there is one.
  trn = trainer.get_trainer(cfg, sp.vocab_size(), mesh)
  log.print(f"Model: {trn.param_count():,} parameters, {trn.flops_per_token() / 1e6:.1f} MFLOP/token")
  manager = checkpoint.make_manager(run_dir, cfg.train.keep_checkpoints)
  if manager.latest_step() is not None:
    state, _ = checkpoint.restore(manager, trn.abstract_state)
    log.print(f"Resumed from step {int(state.step)}")
  else:
    state = trn.init_state(jax.random.PRNGKey(cfg.seed))
  start_step = int(jax.device_get(state.step))
  train_iter = pipeline.train_dataset(train_rows, local_batch, cfg.seed, start_step, jax.process_index(),
                                      cfg.data.prefetch, data.transform, data.spec(local_batch)
                                      ).as_numpy_iterator()
  # Transformed once: evaluation batches are fixed (seeded by their index), whatever the step.
  eval_list = list(pipeline.eval_batches(eval_rows, local_batch, transform=data.transform, seed=cfg.seed))
  terms = objective.loss_terms(cfg)
  evaluate_now = lambda params: evaluate(trn, params, eval_list, terms, cfg.train.eval_batches)

  # --- Train loop. Metrics of a log step are pulled to the host after the next step is dispatched.
  record = {"name": cfg.name}
  pending = None
  log.start(start_step)
  for step in range(start_step + 1, cfg.train.num_steps + 1):
    state, metrics = trn.train_step(state, partitioning.global_batch(next(train_iter), mesh))
    if pending is not None:
      log.train_progress(*pending)
      pending = None
    if step % cfg.train.log_every == 0 or step == cfg.train.num_steps:
      pending = (step, metrics)
    if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.num_steps:
      if pending is not None:
        log.train_progress(*pending)
        pending = None
      result = evaluate_now(state.params)
      log.write(step, result, "eval")
      log.print(f"eval at step {step}: {describe(result)}")
      log.start(step)
    if step % cfg.train.checkpoint_every == 0 and step != cfg.train.num_steps:
      checkpoint.save(manager, state, record)
  if pending is not None:
    log.train_progress(*pending)
  final_step = int(jax.device_get(state.step))
  if manager.latest_step() != final_step:
    checkpoint.save(manager, state, record)

  # --- Final evaluation, metrics.json and samples.
  result = evaluate_now(state.params)
  log.write(final_step, result, "eval")
  log.print(f"final eval at step {final_step}: {describe(result)}")
  prompts = list(cfg.sample.prompts)
  for prompt, text in zip(prompts, complete.complete(cfg, trn.model, state.params, sp, prompts, cfg.seed)):
    log.print(f"sample: {prompt} -> {text}")
  manager.wait_until_finished()
  manager.close()
  summary = {"step": final_step, "validation": result, "parameters": trn.param_count(),
             "flops_per_token": trn.flops_per_token(), "wall_time_s": time.perf_counter() - start_time}
  workdir.write_json(run_dir, "metrics.json", summary)
  log.close()
  return summary
