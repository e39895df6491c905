"""Throughput benchmark of the train step, evaluation and decoding: python -m lmlab.bench [--shapes a,b]
[--family F] [--steps N], or of experiment presets: --config experiments/t5.py:size=small (repeatable).

Times exactly what training runs: the jitted train step of train/trainer.py on a batch made by the
objective's own transform (objectives/) from synthetic documents, for any family and objective. Prints,
per model shape, the train step's compile time (tracing, lowering and XLA's compilation, without the
persistent compilation cache), the first step (that compile and one execution), the median step time,
tokens/s, model GFLOP/s (lmlab's FLOP count: 6N + 12 * layers * d_model * seq_len per token for
Transformers) and that as a fraction of the device's peak (model FLOPs utilization, train/hardware.py:
on CPU this machine's float32 matmul peak, measured in the same run with large jnp.dots; on accelerators
the published bf16 peak); then evaluation tokens/s (the eval step on the same batch) and greedy decoding
tokens/s with the KV cache (recurrent LMs: their carried state) at batch 1 and 16 (16-token prompts,
generating to the end of the row). A benchmark, not a test: nothing is asserted.
"""

import argparse
import os
import platform
import time

import jax
import numpy as np

from lmlab import config as config_lib
from lmlab import objectives
from lmlab.data import documents, tokenizer
from lmlab.decode import sampling, seq2seq
from lmlab.objectives import span
from lmlab.sweeps import stages
from lmlab.train import hardware, partitioning, trainer

SHAPES = {
    # name: (layers, d_model, heads, mlp_dim, vocab, seq_len, batch)
    "a": (4, 128, 4, 512, 65, 64, 12),  # nanoGPT's Shakespeare-char scale
    "b": (6, 512, 8, 2048, 8192, 256, 16),
    "tiny": (2, 32, 2, 64, 64, 16, 4),  # seconds: the smoke test of this code path
}


def bench_config(shape: str, family: str = "decoder", objective: str | None = None, cell: str = "lstm",
                 dtype: str = "float32"):
  """The config of a benchmark shape for a family and objective (default: the family's first)."""
  layers, d_model, heads, mlp_dim, vocab, seq_len, batch = SHAPES[shape]
  cfg = config_lib.default_config()
  cfg.model.family, cfg.model.rnn_cell, cfg.model.dtype = family, cell, dtype
  cfg.objective.name = objective or objectives.by_family()[family][0]
  cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads, cfg.model.mlp_dim = layers, d_model, heads, mlp_dim
  cfg.data.seq_len, cfg.data.batch_size = seq_len, batch
  cfg.tokenizer.vocab_size = vocab
  # As few sentinels as the objective needs, so that the small vocabularies keep ordinary tokens.
  cfg.tokenizer.num_sentinels = 0
  if cfg.objective.name == "span_corruption":
    tokens_length, _ = span.span_corruption_lengths(seq_len)
    cfg.tokenizer.num_sentinels = span.max_noise_spans(tokens_length)
  cfg.optim.warmup_steps = 0
  cfg.mesh.data = 1
  config_lib.validate(cfg, num_devices=1)
  return cfg


def experiment_config(spec: str):
  """The config of an experiment file and its variants ("experiments/bert.py:size=small") on one device."""
  path, _, arg = spec.partition(":")
  cfg = stages.experiment_loader(os.path.dirname(path) or ".")(f"{os.path.basename(path)}:{arg}")
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, 1
  config_lib.validate(cfg, num_devices=1)
  return cfg


def synthetic_batch(cfg, seed: int = 0) -> dict:
  """One batch made as training makes it: random documents -> the objective's rows -> its transform."""
  rng = np.random.default_rng(seed)
  vocab, special = cfg.tokenizer.vocab_size, tokenizer.num_special_ids(cfg.tokenizer.num_sentinels)
  docs = [np.concatenate([[tokenizer.BOS_ID], rng.integers(special, vocab, n), [tokenizer.EOS_ID]]).astype(np.int32)
          for n in rng.integers(cfg.data.seq_len // 2, 4 * cfg.data.seq_len, 8 * cfg.data.batch_size)]
  data = objectives.get(cfg.objective.name).data(cfg, vocab)
  batch = data.rows(documents.Documents.from_list(docs)).get(np.arange(cfg.data.batch_size))
  return data.transform(batch, np.random.default_rng([seed, 0, 0]))


def bench_shape(cfg, steps: int) -> dict:
  """Compile time, median step time, tokens/s and model GFLOP/s of cfg's train step on one device."""
  mesh = partitioning.make_mesh((1, 1, 1), jax.devices()[:1])
  trn = trainer.get_trainer(cfg, cfg.tokenizer.vocab_size, mesh)
  batch = partitioning.global_batch(synthetic_batch(cfg), mesh)
  state = jax.block_until_ready(trn.init_state(jax.random.PRNGKey(0)))
  metrics = None
  # Compilation alone (trace, lowering, XLA) is timed ahead of time; the first step adds one execution.
  start = time.perf_counter()
  compiled = trn.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start

  def train_step():
    nonlocal state, metrics
    state, metrics = compiled(state, batch)
    return metrics

  first_step_s = compile_s + _timed(train_step, 1)[0]
  step_s = float(np.median(_timed(train_step, steps)))
  tokens = cfg.data.batch_size * cfg.data.seq_len
  # Evaluation: the jitted eval step (loss sums, no gradients) on the same batch.
  eval_step = lambda: trn.eval_step(state.params, batch)
  _timed(eval_step, 1)  # compiles
  eval_s = float(np.median(_timed(eval_step, steps)))
  return {"params": trn.param_count(), "compile_s": compile_s, "first_step_s": first_step_s,
          "ms_per_step": step_s * 1e3,
          "tokens_per_s": tokens / step_s, "gflops": tokens / step_s * trn.flops_per_token() / 1e9,
          "eval_tokens_per_s": tokens / eval_s, "loss": float(metrics["loss"]), "state": state, "trainer": trn}


def _timed(fn, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of fn, its result waited for."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def bench_decode(cfg, trn, params, batch_size: int, repeats: int = 3) -> float | None:
  """Greedy decoding tokens/s with the KV cache (encoder-decoder: its decoder's cache) for batch_size
  prompts of 16 tokens (a quarter row for short rows), generating to the end of the row (encoder-decoder:
  the span-corruption target length); None for the encoder (no decoding)."""
  if cfg.model.family == "encoder":
    return None
  prompt_len = min(16, cfg.data.seq_len // 4)
  new_tokens = cfg.data.seq_len - prompt_len
  prompts = np.random.default_rng(0).integers(10, cfg.tokenizer.vocab_size, (batch_size, prompt_len)).tolist()
  if cfg.model.family == "encoder_decoder":
    new_tokens = span.span_corruption_lengths(cfg.data.seq_len)[1]
    prompts = [p + [0] * (cfg.data.seq_len - prompt_len) for p in prompts]
    run = lambda: seq2seq.generate(trn.model, params, prompts, max_len=new_tokens, rng=jax.random.PRNGKey(0),
                                   eos_id=-1, temperature=0.0)
  else:
    run = lambda: sampling.sample(trn.model, params, prompts, max_new_tokens=new_tokens, rng=jax.random.PRNGKey(0),
                                  temperature=0.0)
  run()  # compiles
  return batch_size * new_tokens / min(_timed(run, repeats))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20, help="timed steps per shape (after the first)")
  parser.add_argument("--shapes", default="a,b", help=f"comma-separated subset of {','.join(SHAPES)}")
  parser.add_argument("--family", default="decoder",
                      choices=[f for f in config_lib.CHOICES["model.family"] if f != "ngram"])
  parser.add_argument("--objective", default=None, help="default: the family's first objective")
  parser.add_argument("--cell", default="lstm", choices=config_lib.CHOICES["model.rnn_cell"])
  parser.add_argument("--dtype", default="float32", choices=config_lib.CHOICES["model.dtype"])
  parser.add_argument("--config", action="append", default=[],
                      help="an experiment file with its variants (experiments/t5.py:size=small) instead of "
                           "--shapes; repeat for several")
  args = parser.parse_args(argv)
  try:
    if args.config:
      configs = [(spec, experiment_config(spec)) for spec in args.config]
    else:
      shapes = args.shapes.split(",")
      unknown = [shape for shape in shapes if shape not in SHAPES]
      if unknown:
        parser.exit(2, f"error: unknown shape(s) {', '.join(unknown)}; --shapes takes {', '.join(SHAPES)}.\n")
      configs = [(shape, bench_config(shape, args.family, args.objective, args.cell, args.dtype))
                 for shape in shapes]
  except config_lib.ConfigError as e:
    parser.exit(2, f"error: {e}\n")
  peak, source = hardware.peak_flops(jax.devices()[:1])
  peak = (peak or float("nan")) / 1e9
  print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} "
        f"device(s), jax {jax.__version__}; peak {peak:.1f} GFLOP/s ({source})")
  width = max(5, *(len(label) for label, _ in configs))
  for label, cfg in configs:
    m = cfg.model
    cell = f" ({m.rnn_cell})" if m.family == "rnn" else ""
    print(f"  {label}: family {m.family}{cell}, objective {cfg.objective.name}, {m.dtype}, "
          f"{m.num_layers} layers x d_model {m.d_model}, seq {cfg.data.seq_len}, batch {cfg.data.batch_size}, "
          f"vocab {cfg.tokenizer.vocab_size}")
  print(f"{'shape':{width}} {'params':>11} {'compile s':>9} {'1st step s':>10} {'ms/step':>8} {'tokens/s':>9} "
        f"{'GFLOP/s':>8} {'MFU':>7} {'eval tok/s':>10} {'decode tok/s b=1':>16} {'b=16':>8}")
  for label, cfg in configs:
    r = bench_shape(cfg, args.steps)
    decode = [bench_decode(cfg, r["trainer"], r["state"].params, b) for b in (1, 16)]
    decode = [f"{d:,.0f}" if d else "-" for d in decode]
    print(f"{label:{width}} {r['params']:11,} {r['compile_s']:9.2f} {r['first_step_s']:10.2f} {r['ms_per_step']:8.1f} "
          f"{r['tokens_per_s']:9,.0f} {r['gflops']:8.1f} {r['gflops'] / peak:7.1%} {r['eval_tokens_per_s']:10,.0f} "
          f"{decode[0]:>16} {decode[1]:>8}", flush=True)


if __name__ == "__main__":
  main()
