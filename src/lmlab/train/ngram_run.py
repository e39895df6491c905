"""The Kneser-Ney n-gram baseline's run (config.model.family = "ngram"): fit on the training documents,
score the validation tokens a causal model scores (same packed rows, same targets), write metrics.json."""

import os
import time

import jax
import numpy as np

from lmlab import config as config_lib
from lmlab.data import dedup, packing, shards, sources
from lmlab.errors import ConfigError
from lmlab.models import ngram
from lmlab.train import logger, workdir
from lmlab.train.evaluate import describe


def run(cfg) -> dict:
  start_time = time.perf_counter()
  config_lib.validate(cfg, jax.device_count(), jax.process_count())
  if jax.process_count() > 1:
    raise ConfigError("config.model.family = 'ngram' runs in one process; drop --num_processes.")
  sources.check(cfg.data)
  with workdir.run_in(cfg) as run_dir:
    return _fit_and_score(cfg, run_dir, start_time)


def _fit_and_score(cfg, run_dir: str, start_time: float) -> dict:
  log = logger.MetricsLogger(run_dir, 0, 0)
  log.print(f"Work directory: {os.path.abspath(run_dir)}")
  sp = workdir.load_tokenizer(cfg, run_dir, log.print)
  tokenizer_path = os.path.join(run_dir, "tokenizer.model")
  # The same token shards as the neural runs; the counts themselves are held in memory.
  train_docs, _ = shards.split_documents(cfg, cfg.data.train_split, tokenizer_path, out=log.print)
  eval_docs, _ = shards.split_documents(cfg, cfg.data.eval_split, tokenizer_path, out=log.print)
  log.print(f"Data: {train_docs.num_tokens:,} train / {eval_docs.num_tokens:,} validation tokens")
  novel_docs = dedup.novel_documents(cfg.data, train_docs, eval_docs, log.print)
  lm = ngram.KneserNey.fit(list(train_docs), sp.vocab_size(), cfg.model.ngram_order)

  def score(docs):
    rows = packing.PackedRows(docs, cfg.data.seq_len)
    return lm.evaluate_packed(rows.get(np.arange(rows.num_rows)))

  result = score(eval_docs)
  log.print(f"{cfg.model.ngram_order}-gram Kneser-Ney: validation {describe(result)}")
  summary = {"step": 0, "validation": result, "ngrams": sum(len(level.keys) for level in lm.levels),
             "wall_time_s": time.perf_counter() - start_time}
  if novel_docs is not None:
    summary["validation_dedup"] = dict(score(novel_docs), documents=novel_docs.num_docs)
    log.print(f"without near-duplicates of training documents: {describe(summary['validation_dedup'])}")
  log.hparams(cfg.to_dict(), summary)
  workdir.write_json(run_dir, "metrics.json", summary)
  log.close()
  return summary
