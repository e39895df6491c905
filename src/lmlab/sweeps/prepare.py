"""What a sweep's points share, prepared once before they fan out, so parallel workers never race on it:
the TFDS datasets (built into their data directories) and the corpus tokenizers (trained once per
distinct corpus and tokenizer config into <sweep>/shared/, then copied into each point's directory, where
the run finds it as if it had trained it: sentencepiece training is deterministic)."""

import hashlib
import json
import os
import shutil

from lmlab.data import sources, tokenizer

# The data fields that decide which text a corpus tokenizer is trained on.
TOKENIZER_DATA = ("source", "tfds_name", "tfds_data_dir", "text_key", "train_split", "text_glob", "text_unit",
                  "text_eval_percent")


def _needs_corpus_tokenizer(cfg) -> bool:
  """Pretraining and from-scratch fine-tuning train the tokenizer on cfg.data's corpus; fine-tuning from a
  checkpoint copies its tokenizer, baselines have none, task.tokenizer = "task" trains on the task."""
  if "task" not in cfg:
    return True
  return not cfg.init_from and not cfg.finetune.baseline and cfg.task.tokenizer == "corpus"


def _key(cfg) -> str:
  fields = {"data": {k: cfg.data[k] for k in TOKENIZER_DATA if k in cfg.data}, "tokenizer": cfg.tokenizer.to_dict()}
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]


def shared(points, sweep_dir: str, out=print) -> None:
  """Prepares the datasets and tokenizers of `points` (sweeps.points.Point) before any of them runs."""
  checked = set()
  for p in points:
    data_key = json.dumps(p.config.data.to_dict(), sort_keys=True, default=str)
    if data_key not in checked and ("task" not in p.config or _needs_corpus_tokenizer(p.config)):
      sources.check(p.config.data)  # builds an unprepared TFDS dataset (raises DataError when it cannot)
      checked.add(data_key)
    copy_tokenizer(p, sweep_dir, out)


def copy_tokenizer(p, sweep_dir: str, out=print) -> None:
  """The point's corpus tokenizer from <sweep>/shared/ (trained there first if missing) into its directory."""
  target = os.path.join(p.workdir, "tokenizer.model")
  if not _needs_corpus_tokenizer(p.config) or os.path.exists(target):
    return
  path = os.path.join(sweep_dir, "shared", f"tokenizer-{_key(p.config)}.model")
  if not os.path.exists(path):
    out(f"  training the shared tokenizer {path}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tokenizer.train(path, sources.load_documents(p.config.data, p.config.data.train_split), p.config.tokenizer)
  os.makedirs(p.workdir, exist_ok=True)
  shutil.copyfile(path, f"{target}.{os.getpid()}.tmp")
  os.replace(f"{target}.{os.getpid()}.tmp", target)
