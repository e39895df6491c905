"""What a pretrained model does with a prompt, chosen by its objective's `decode` (objectives/base.py):
continue it (causal models, decode/sampling.py), fill its [MASK]s (masked LMs, decode/fill_mask.py), or
decode the targets of a corrupted prompt (encoder-decoders, decode/seq2seq.py); and `sample_workdir`,
which loads a finished run and does that."""

import jax

from lmlab import config as config_lib
from lmlab import objectives
from lmlab.data import tokenizer
from lmlab.decode import fill_mask, sampling, seq2seq
from lmlab.errors import CheckpointError, ConfigError
from lmlab.train import checkpoint, partitioning, trainer, workdir


def _continue(cfg, model, params, sp, prompts, seed):
  """Sampling, or beam search with cfg.sample.beam_size; a prefix LM reads the prompt as its prefix."""
  prompt_ids = [[tokenizer.BOS_ID] + sp.encode(p) for p in prompts]
  prefix = objectives.get(cfg.objective.name).model_options.get("prefix", False)
  if cfg.sample.beam_size:
    outputs, _ = sampling.beam_search(
        model, params, prompt_ids, max_new_tokens=cfg.sample.max_new_tokens, eos_id=tokenizer.EOS_ID,
        beam_size=cfg.sample.beam_size, alpha=cfg.sample.length_penalty, prefix=prefix)
  else:
    outputs = sampling.sample(
        model, params, prompt_ids, max_new_tokens=cfg.sample.max_new_tokens, rng=jax.random.PRNGKey(seed),
        temperature=cfg.sample.temperature, top_k=cfg.sample.top_k, top_p=cfg.sample.top_p,
        eos_id=tokenizer.EOS_ID, prefix=prefix)
  return [sp.decode(ids) for ids in outputs]


def _fill_mask(cfg, model, params, sp, prompts, seed, pair=False):
  del seed  # the top-k candidates are deterministic
  fills = fill_mask.fill_mask(model, params, sp, prompts, seq_len=cfg.data.seq_len,
                              top_k=cfg.sample.top_k or 5, pair=pair)
  return [fill_mask.describe(candidates) for candidates in fills]


def _seq2seq(cfg, model, params, sp, prompts, seed):
  """The prompt is the corrupted input ("Shares <extra_id_0> sharply."); its targets are decoded."""
  inputs = [sp.encode(p)[:cfg.data.seq_len - 1] + [tokenizer.EOS_ID] for p in prompts]
  outputs = seq2seq.generate(
      model, params, inputs, max_len=cfg.sample.max_new_tokens, rng=jax.random.PRNGKey(seed),
      eos_id=tokenizer.EOS_ID, temperature=cfg.sample.temperature, top_k=cfg.sample.top_k,
      top_p=cfg.sample.top_p, beam_size=cfg.sample.beam_size, alpha=cfg.sample.length_penalty)
  return [sp.decode(ids) for ids in outputs]


DECODERS = {
    "continue": _continue,
    "fill_mask": _fill_mask,
    "fill_mask_pair": lambda *args: _fill_mask(*args, pair=True),
    "seq2seq": _seq2seq,
}


def complete(cfg, model, params, sp, prompts: list[str], seed: int) -> list[str]:
  """One text per prompt, by cfg.objective's decoder; cfg.sample sets lengths and sampling."""
  return DECODERS[objectives.get(cfg.objective.name).decode](cfg, model, params, sp, list(prompts), seed)


def sample_workdir(run_dir: str, prompts=None, seed: int = 0, overrides=None) -> list[tuple[str, str]]:
  """Loads a pretraining run's latest checkpoint and tokenizer and completes `prompts` (default its
  config.sample.prompts); overrides: cfg.sample values (None keeps the run's). Returns (prompt, text)."""
  cfg = workdir.load_config(run_dir)
  if "task" in cfg:
    raise ConfigError(f"{run_dir} is a fine-tuning run; use `launch.py predict --workdir {run_dir}`.")
  for key, value in (overrides or {}).items():
    if value is not None:
      cfg.sample[key] = value
  config_lib.validate(cfg)
  if cfg.model.family == "ngram":
    raise ConfigError(f"{run_dir} holds an n-gram baseline run: it has no checkpoint to sample.")
  sp = tokenizer.load(f"{run_dir}/tokenizer.model", cfg.tokenizer)  # a DataError names what is wrong
  mesh = partitioning.data_parallel_mesh()
  trn = trainer.get_trainer(cfg, sp.vocab_size(), mesh)
  manager = checkpoint.make_manager(run_dir, cfg.train.keep_checkpoints)
  if manager.latest_step() is None:
    raise CheckpointError(f"{run_dir} has no checkpoint yet; train first.")
  state, _ = checkpoint.restore(manager, trn.abstract_state)
  manager.close()
  prompts = list(prompts or cfg.sample.prompts)
  return list(zip(prompts, complete(cfg, trn.model, state.params, sp, prompts, seed)))
