"""One run of any kind, chosen by its config: fine-tuning (a config with a `task` section), the n-gram
baseline, or pretraining. launch.py and the sweep workers both start runs here."""


import os


def use_compilation_cache(cfg) -> None:
  """JAX's persistent compilation cache in the lmlab cache (<cache>/jax), unless the user chose one
  ($JAX_COMPILATION_CACHE_DIR): a rerun, a resumed run and every point of a sweep with the same shapes
  load their compiled steps instead of compiling them again."""
  import jax

  from lmlab.data import cache
  if jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  jax.config.update("jax_compilation_cache_dir", os.path.join(cache.cache_dir(cfg.data), "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(cfg, on_eval=None) -> dict:
  """Runs (or resumes) cfg in cfg.workdir and returns the summary it wrote to metrics.json. on_eval(step,
  validation result) is called after each periodic evaluation (the n-gram baseline has none)."""
  use_compilation_cache(cfg)
  if "task" in cfg:
    from lmlab.tasks import finetune
    return finetune.run(cfg, on_eval)
  if cfg.model.family == "ngram":
    from lmlab.train import ngram_run
    return ngram_run.run(cfg)
  from lmlab.train import loop
  return loop.train_and_evaluate(cfg, on_eval)
