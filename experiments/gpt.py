r"""GPT: a decoder-only Transformer pretrained with causal LM on the bundled BBC News corpus.

Run (2-core CPU, about 7 minutes including tokenizer training; the result is in runs/gpt_small):
  python launch.py --config experiments/gpt.py:size=small

Expected: validation perplexity about 190 after 300 steps (1.2M tokens seen); see the README for the
measured figures. Variants (comma separated after the colon):
  size=tiny|small|base        tiny: seconds, for tests; small: the CPU default; base: GPT-2-small scale
                              (124M-class, bfloat16, scanned layers) for accelerators.
  positions=learned|sinusoidal|rotary
  norm=layernorm|rmsnorm, mlp=gelu|swiglu
Any field can be overridden on the command line, e.g. --config.optim.lr=1e-3 --config.train.num_steps=600.
The sweep below compares position encodings and learning rates:
  python launch.py sweep --config experiments/gpt.py:size=small
"""

import itertools

from lmlab import config as config_lib

SIZES = {
    # name: (layers, d_model, heads, mlp_dim, seq_len, batch, vocab, steps, lr)
    "tiny": (2, 64, 2, 256, 64, 8, 512, 20, 3e-3),
    "small": (4, 256, 4, 1024, 128, 32, 4096, 300, 3e-3),
    "base": (12, 768, 12, 3072, 1024, 256, 16384, 20000, 6e-4),
}


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, size="small", positions="learned", norm="layernorm", mlp="gelu")
  if opts.size not in SIZES:
    raise config_lib.ConfigError(f"Unknown size {opts.size!r}; sizes are {', '.join(SIZES)}.")
  layers, d_model, heads, mlp_dim, seq_len, batch, vocab, steps, lr = SIZES[opts.size]
  c = config_lib.default_config()
  c.name = f"gpt_{opts.size}"
  c.data.seq_len, c.data.batch_size = seq_len, batch
  c.tokenizer.vocab_size = vocab
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.mlp_dim = layers, d_model, heads, mlp_dim
  c.model.positions, c.model.norm, c.model.mlp_activation = opts.positions, opts.norm, opts.mlp
  c.optim.lr = lr
  c.train.num_steps = steps
  if opts.size == "tiny":
    c.tokenizer.model_type = "bpe"  # trains in a fraction of a second
    c.optim.warmup_steps = 5
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 4
    c.train.checkpoint_every = 10
    c.sample.max_new_tokens = 8
  if opts.size == "base":
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "dots"
    c.model.dropout_rate = 0.1
    c.optim.warmup_steps = 1000
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_batches = 50
    c.train.checkpoint_every = 1000
    c.mesh.fsdp = -1
    c.mesh.data = 1
  return c


def get_sweep():
  """Overrides for `launch.py sweep`: position encodings x peak learning rates."""
  return [{"model.positions": p, "optim.lr": lr}
          for p, lr in itertools.product(("learned", "sinusoidal", "rotary"), (1e-3, 3e-3))]
