"""What a sweep's points share, prepared once before they fan out, so parallel workers never wait on it:
the TFDS datasets (built into their data directories), the corpus tokenizers and the token shards of the
training and validation splits, in the data cache (data/cache.py) where every point's run finds them."""

import json

from lmlab.data import cache, shards, sources


def _needs_corpus(cfg) -> bool:
  """Pretraining and from-scratch fine-tuning train on cfg.data's corpus tokenizer; fine-tuning from a
  checkpoint copies its tokenizer, baselines have none, task.tokenizer = "task" trains on the task."""
  if "task" not in cfg:
    return True
  return not cfg.init_from and not cfg.finetune.baseline and cfg.task.tokenizer == "corpus"


def shared(points, out=print) -> None:
  """Prepares the datasets, tokenizers and (for pretraining) token shards of `points` (sweeps.points.Point)
  before any of them runs; each distinct corpus and tokenizer once."""
  done = set()
  for p in points:
    cfg = p.config
    key = json.dumps([cfg.data.to_dict(), cfg.tokenizer.to_dict()], sort_keys=True, default=str)
    if key in done or not _needs_corpus(cfg):
      continue
    done.add(key)
    sources.check(cfg.data)  # builds an unprepared TFDS dataset (raises DataError when it cannot)
    path = cache.corpus_tokenizer(cfg, out)
    if "task" not in cfg:
      for split in (cfg.data.train_split, cfg.data.eval_split):
        shards.prepare(shards.plan(cfg.data, split, path), cfg.data.prepare_workers, out)
