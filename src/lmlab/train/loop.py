"""The training run: config -> data -> model and state -> train loop -> checkpoints, metrics, samples."""

import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lmlab import config as config_lib
from lmlab import objectives
from lmlab.data import batches, pipeline, sources, tokenizer
from lmlab.decode import fill_mask, sampling, seq2seq
from lmlab.models import ngram
from lmlab.train import checkpoint, logger, partitioning, trainer

# Sections that must not change when a work directory is resumed: they define the checkpoint's meaning.
FROZEN_ON_RESUME = ("model", "objective", "tokenizer", "data.seq_len", "data.source", "data.tfds_name", "data.text_glob",
                    "data.text_unit", "seed")


def _lookup(cfg, dotted):
  for key in dotted.split("."):
    cfg = cfg[key]
  return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg


def prepare_workdir(cfg) -> str:
  """Creates the work directory and saves config.json; refuses to resume with an incompatible config."""
  workdir = cfg.workdir or os.path.join("runs", cfg.name)
  saved_path = os.path.join(workdir, "config.json")
  if os.path.exists(saved_path):
    with open(saved_path) as f:
      saved = ml_collections.ConfigDict(json.load(f))
    for key in FROZEN_ON_RESUME:
      if json.dumps(_lookup(saved, key), sort_keys=True) != json.dumps(_lookup(cfg, key), sort_keys=True):
        raise config_lib.ConfigError(
            f"{workdir} was started with a different config.{key} ({_lookup(saved, key)} != "
            f"{_lookup(cfg, key)}); resuming it would mix two experiments. Use another --config.workdir, "
            "or the original setting.")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(saved_path + ".tmp", "w") as f:
      f.write(cfg.to_json(indent=2))
    os.replace(saved_path + ".tmp", saved_path)
  return workdir


def load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_tokenizer(cfg, workdir: str):
  """The work directory's tokenizer; process 0 trains it on the whole training split if it is missing."""
  path = os.path.join(workdir, "tokenizer.model")
  if jax.process_index() == 0:
    sp = tokenizer.load_or_train(path, lambda: sources.load_documents(cfg.data, cfg.data.train_split),
                                 cfg.tokenizer)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("tokenizer")
  if jax.process_index() != 0:
    sp = tokenizer.load_or_train(path, lambda: [], cfg.tokenizer)
  return sp


def encoded_split(cfg, sp, split: str) -> list[np.ndarray]:
  """This process's share of `split`, tokenized in one batch call."""
  docs = sources.load_documents(cfg.data, split, jax.process_index(), jax.process_count())
  return tokenizer.encode_documents(sp, docs)


def evaluate(trn: trainer.Trainer, params, local_batches: list[dict], max_batches: int) -> dict:
  """Weighted loss, perplexity and accuracy (of the objective's targets: next tokens, or masked tokens)
  and next-sentence accuracy over the validation batches of every process; `local_batches` are this
  process's share."""
  count = len(local_batches)
  if jax.process_count() > 1:  # every process must run the same number of steps
    count = int(np.max(multihost_utils.process_allgather(np.asarray(count))))
  if max_batches:
    count = min(count, max_batches)
  empty = {k: np.zeros_like(v) for k, v in local_batches[0].items()}
  totals = None
  for i in range(count):
    batch = partitioning.global_batch(local_batches[i] if i < len(local_batches) else empty, trn.mesh)
    sums = trn.eval_step(params, batch)
    totals = sums if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, sums)
  result = {k: float(v) for k, v in jax.device_get(objectives.metrics(totals)).items()}
  return dict(result, perplexity=math.exp(min(result["loss"], 50.0)))


def describe(result: dict) -> str:
  """One line of evaluation metrics."""
  text = f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.2f}"
  for key in ("accuracy", "nsp_accuracy"):
    if key in result:
      text += f" | {key.replace('_', ' ')} {result[key]:.3f}"
  return text


def complete(cfg, trn: trainer.Trainer, params, sp, prompts, seed: int) -> list[str]:
  """What each family does with a prompt: causal models continue it (decode/sampling.py), masked-LM
  models fill its [MASK]s with their top_k candidates (decode/fill_mask.py), encoder-decoders decode
  the targets of the corrupted prompt (decode/seq2seq.py: sampling or beam search)."""
  if cfg.objective.name in ("mlm", "mlm_nsp"):
    fills = fill_mask.fill_mask(trn.model, params, sp, prompts, seq_len=cfg.data.seq_len,
                                top_k=cfg.sample.top_k or 5, pair=cfg.objective.name == "mlm_nsp")
    return [fill_mask.describe(candidates) for candidates in fills]
  if cfg.model.family == "encoder_decoder":  # the prompt is the corrupted input; decode its targets
    inputs = [sp.encode(p)[:cfg.data.seq_len - 1] + [tokenizer.EOS_ID] for p in prompts]
    outputs = seq2seq.generate(
        trn.model, params, inputs, max_len=cfg.sample.max_new_tokens, rng=jax.random.PRNGKey(seed),
        eos_id=tokenizer.EOS_ID, temperature=cfg.sample.temperature, top_k=cfg.sample.top_k,
        top_p=cfg.sample.top_p, beam_size=cfg.sample.beam_size, alpha=cfg.sample.length_penalty)
    return [sp.decode(ids) for ids in outputs]
  prompt_ids = [[tokenizer.BOS_ID] + sp.encode(p) for p in prompts]
  outputs = sampling.sample(
      trn.model, params, prompt_ids, max_new_tokens=cfg.sample.max_new_tokens, rng=jax.random.PRNGKey(seed),
      temperature=cfg.sample.temperature, top_k=cfg.sample.top_k, top_p=cfg.sample.top_p,
      eos_id=tokenizer.EOS_ID)
  return [sp.decode(ids) for ids in outputs]


def train_and_evaluate(cfg) -> dict:
  """Runs (or resumes) training in cfg.workdir and returns the final validation metrics."""
  start_time = time.perf_counter()
  # --- Config and mesh: every check before any compute.
  config_lib.validate(cfg, jax.device_count(), jax.process_count())
  mesh = partitioning.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
  workdir = prepare_workdir(cfg)
  log = logger.MetricsLogger(workdir, cfg.train.num_steps, cfg.data.batch_size * cfg.data.seq_len)
  log.print(f"Work directory: {os.path.abspath(workdir)}")
  log.print(f"Mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
            f"{jax.process_count()} process(es)")

  # --- Input: tokenizer, the objective's rows, the resumable train stream.
  sp = load_tokenizer(cfg, workdir)
  train_docs, eval_docs = encoded_split(cfg, sp, cfg.data.train_split), encoded_split(cfg, sp, cfg.data.eval_split)
  log.print(f"Data: {sum(map(len, train_docs)):,} train / {sum(map(len, eval_docs)):,} validation tokens "
            f"(this process), objective {cfg.objective.name}, rows of {cfg.data.seq_len}")
  if cfg.model.family == "ngram":
    return _ngram_run(cfg, workdir, log, train_docs, eval_docs, sp.vocab_size(), start_time)
  data = batches.for_config(cfg, sp)
  train_rows, eval_rows = data.rows(train_docs), data.rows(eval_docs)
  local_batch = cfg.data.batch_size // jax.process_count()

  # --- Model, optimizer and sharded state; resume from the latest checkpoint if there is one.
  trn = trainer.Trainer(cfg, sp.vocab_size(), mesh)
  log.print(f"Model: {trn.param_count():,} parameters, {trn.flops_per_token() / 1e6:.1f} MFLOP/token")
  manager = checkpoint.make_manager(workdir, cfg.train.keep_checkpoints)
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
  evaluate_now = lambda params: evaluate(trn, params, eval_list, cfg.train.eval_batches)

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
  for prompt, text in zip(cfg.sample.prompts, complete(cfg, trn, state.params, sp, list(cfg.sample.prompts),
                                                       cfg.seed)):
    log.print(f"sample: {prompt} -> {text}")
  manager.wait_until_finished()
  manager.close()
  summary = {"step": final_step, "validation": result, "parameters": trn.param_count(),
             "flops_per_token": trn.flops_per_token(), "wall_time_s": time.perf_counter() - start_time}
  _write_summary(workdir, summary)
  log.close()
  return summary


def _write_summary(workdir: str, summary: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(summary, f, indent=2)


def _ngram_run(cfg, workdir, log, train_docs, eval_docs, vocab_size: int, start_time: float) -> dict:
  """The n-gram baseline: fit on the training documents, score the validation tokens a causal model
  scores (same packed rows, same targets), write metrics.json."""
  if jax.process_count() > 1:
    raise config_lib.ConfigError("config.model.family = 'ngram' runs in one process; drop --num_processes.")
  lm = ngram.KneserNey.fit(train_docs, vocab_size, cfg.model.ngram_order)
  result = lm.evaluate_packed(pipeline.pack_documents(eval_docs, cfg.data.seq_len))
  log.print(f"{cfg.model.ngram_order}-gram Kneser-Ney: validation {describe(result)}")
  summary = {"step": 0, "validation": result, "ngrams": sum(len(level.keys) for level in lm.levels),
             "wall_time_s": time.perf_counter() - start_time}
  _write_summary(workdir, summary)
  log.close()
  return summary


def sample_workdir(workdir: str, prompts=None, seed: int = 0, overrides=None) -> list[tuple[str, str]]:
  """Loads a run's latest checkpoint and tokenizer and continues `prompts`; returns (prompt, text) pairs."""
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise config_lib.ConfigError(f"{workdir} has no config.json: it is not an lmlab work directory.")
  cfg = load_config(workdir)
  if "task" in cfg:
    raise config_lib.ConfigError(f"{workdir} is a fine-tuning run; use `launch.py predict --workdir {workdir}`.")
  for key, value in (overrides or {}).items():
    if value is not None:
      cfg.sample[key] = value
  config_lib.validate(cfg)
  if cfg.model.family == "ngram":
    raise config_lib.ConfigError(f"{workdir} holds an n-gram baseline run: it has no checkpoint to sample.")
  path = os.path.join(workdir, "tokenizer.model")
  if not os.path.exists(path):
    raise config_lib.ConfigError(f"{workdir} has no tokenizer.model; train first.")
  sp = tokenizer.load_or_train(path, lambda: [], cfg.tokenizer)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1  # sampling needs no model parallelism
  mesh = partitioning.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
  trn = trainer.Trainer(cfg, sp.vocab_size(), mesh)
  manager = checkpoint.make_manager(workdir, cfg.train.keep_checkpoints)
  if manager.latest_step() is None:
    raise checkpoint.CheckpointError(f"{workdir} has no checkpoint yet; train first.")
  state, _ = checkpoint.restore(manager, trn.abstract_state)
  manager.close()
  prompts = list(prompts or cfg.sample.prompts)
  return list(zip(prompts, complete(cfg, trn, state.params, sp, prompts, seed)))
