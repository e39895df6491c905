"""The Kneser-Ney n-gram baseline's run (config.model.family = "ngram"): fit on the training documents,
score the validation tokens a causal model scores (same packed rows, same targets), write metrics.json."""

import os
import time

import jax

from lmlab import config as config_lib
from lmlab.data import packing, sources
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
  sp = workdir.load_tokenizer(cfg, run_dir)
  train_docs = sources.encoded_documents(cfg.data, sp, cfg.data.train_split)
  eval_docs = sources.encoded_documents(cfg.data, sp, cfg.data.eval_split)
  log.print(f"Data: {sum(map(len, train_docs)):,} train / {sum(map(len, eval_docs)):,} validation tokens")
  lm = ngram.KneserNey.fit(train_docs, sp.vocab_size(), cfg.model.ngram_order)
  result = lm.evaluate_packed(packing.pack_documents(eval_docs, cfg.data.seq_len))
  log.print(f"{cfg.model.ngram_order}-gram Kneser-Ney: validation {describe(result)}")
  summary = {"step": 0, "validation": result, "ngrams": sum(len(level.keys) for level in lm.levels),
             "wall_time_s": time.perf_counter() - start_time}
  log.hparams(cfg.to_dict(), summary)
  workdir.write_json(run_dir, "metrics.json", summary)
  log.close()
  return summary
