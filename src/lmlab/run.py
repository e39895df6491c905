"""One run of any kind, chosen by its config: fine-tuning (a config with a `task` section), the n-gram
baseline, or pretraining. launch.py and the sweep workers both start runs here."""


def run(cfg, on_eval=None) -> dict:
  """Runs (or resumes) cfg in cfg.workdir and returns the summary it wrote to metrics.json. on_eval(step,
  validation result) is called after each periodic evaluation (the n-gram baseline has none)."""
  if "task" in cfg:
    from lmlab.tasks import finetune
    return finetune.run(cfg, on_eval)
  if cfg.model.family == "ngram":
    from lmlab.train import ngram_run
    return ngram_run.run(cfg)
  from lmlab.train import loop
  return loop.train_and_evaluate(cfg, on_eval)
