"""The config schema (every field, its default and a one-line meaning) and its validation.

Experiment files start from `default_config()` and change values; `validate()` runs before any compute
and turns typos, wrong types and impossible combinations into one clear `ConfigError` naming the key.
"""

import copy
import difflib
import json

import ml_collections

from lmlab import objectives
from lmlab.errors import ConfigError

ConfigDict = ml_collections.ConfigDict

# Allowed values of the string-valued choices.
CHOICES = {
    "model.family": ("decoder", "encoder", "encoder_decoder", "rnn", "ngram"),
    "model.rnn_cell": ("lstm", "gru"),
    "objective.name": tuple(objectives.REGISTRY),
    "data.source": ("tfds", "text_files"),
    "data.text_unit": ("file", "paragraph", "line"),
    "tokenizer.model_type": ("unigram", "bpe", "char"),
    "model.positions": ("learned", "sinusoidal", "rotary", "relative"),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.mlp_activation": ("gelu", "swiglu"),
    "model.dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "model.attention": ("auto", "explicit", "fused"),
}


def default_config() -> ConfigDict:
  """Every field lmlab knows, with its default. Experiment files override these."""
  c = ConfigDict()
  # Random seed for parameters, dropout and data order.
  c.seed = 0
  # Work directory (checkpoints, tokenizer, logs, metrics); None: runs/<experiment>-<timestamp>.
  c.workdir = None
  # Experiment name used in the default work directory.
  c.name = "gpt"

  c.data = d = ConfigDict()
  # Where documents come from: "tfds" (any TFDS dataset, default the bundled bbc_news) or "text_files".
  d.source = "tfds"
  # TFDS dataset name (with optional config/version), e.g. "bbc_news" or "lm1b".
  d.tfds_name = "bbc_news"
  # TFDS data directory; None: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  d.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  # Feature holding the document text in the TFDS dataset.
  d.text_key = "text"
  # Allow TFDS to download a catalog dataset that is not prepared yet (needs internet).
  d.tfds_download = False
  # TFDS manual_dir holding source files downloaded by hand, for datasets that cannot be fetched here.
  d.tfds_manual_dir = ml_collections.config_dict.placeholder(str)
  # Split names used for training and validation.
  d.train_split = "train"
  d.eval_split = "validation"
  # > 0: the final evaluation also scores the validation documents that are not near-duplicates of
  # training documents (fewer than this fraction of their 8-token shingles occur in the training split;
  # data/dedup.py), reported as metrics.json's validation_dedup. One process only.
  d.eval_dedup = 0.0
  # Glob of the user's own UTF-8 text files (source="text_files").
  d.text_glob = ""
  # What one document is in those files: a whole file, a blank-line separated paragraph, or a line.
  d.text_unit = "file"
  # Percentage of text_files documents held out for validation (chosen by hashing their name).
  d.text_eval_percent = 10
  # Tokens per packed row (model context length).
  d.seq_len = 128
  # Global batch size in rows (across all processes and devices).
  d.batch_size = 32
  # Batches a background thread prepares ahead of the train step (data/pipeline.py).
  d.prefetch = 2
  # Where tokenized splits (token shards) and corpus tokenizers are cached and shared by runs; None:
  # $LMLAB_CACHE, else ~/.cache/lmlab. `python launch.py prepare` fills it ahead of a run.
  d.cache_dir = ml_collections.config_dict.placeholder(str)
  # Token shards per split (0: automatic, one per 64 MB of text and at least one per process); each
  # process reads a contiguous block of them.
  d.num_shards = 0
  # Local processes that prepare missing shards when a run starts (launch.py prepare has --workers).
  d.prepare_workers = 1
  # Check every shard's SHA-256 when a run starts (file sizes are always checked).
  d.verify_shards = True
  # Stop before training when more than this fraction of the training tokens are <unk>: the tokenizer
  # does not fit the data (another script, binary files) and the run would train on nothing.
  d.max_unknown_rate = 0.05

  c.tokenizer = t = ConfigDict()
  # Sentencepiece vocabulary size (ids 0-3 are pad, unk, bos, eos).
  t.vocab_size = 4096
  # Sentencepiece algorithm: unigram, bpe or char.
  t.model_type = "unigram"
  # Fraction of characters the vocabulary must cover (rarer ones map to unk).
  t.character_coverage = 0.9995
  # The tokenizer trains on a uniform sample of at most this many lines of the training split (0: all).
  t.max_sentences = 1_000_000
  # Seed of that sample.
  t.sample_seed = 0
  # T5 sentinel pieces <extra_id_0..N-1> reserved after [CLS] [SEP] [MASK] (ids 7..6+N), for span corruption.
  t.num_sentinels = 100

  c.model = m = ConfigDict()
  # Model family: decoder (GPT), encoder (BERT), encoder_decoder (T5), rnn (LSTM/GRU LM) or ngram
  # (Kneser-Ney baseline).
  m.family = "decoder"
  # Recurrent cell of the rnn family: lstm or gru.
  m.rnn_cell = "lstm"
  # Order of the ngram family (3: trigrams).
  m.ngram_order = 4
  # Number of Transformer blocks (recurrent layers for rnn).
  m.num_layers = 4
  # Width of the residual stream.
  m.d_model = 256
  # Attention heads (d_model must divide by it).
  m.num_heads = 4
  # Hidden width of the MLP.
  m.mlp_dim = 1024
  # Position encoding: learned, sinusoidal, rotary, or relative (T5's bucketed relative position bias:
  # one learned scalar per head and bucket, shared by a stack's layers, added to the attention logits).
  m.positions = "learned"
  # Base of the rotary frequencies.
  m.rope_base = 10000.0
  # relative: number of buckets (half per direction in bidirectional stacks) and the distance beyond
  # which relative positions share the last bucket (T5: 32, 128).
  m.relative_buckets = 32
  m.relative_max_distance = 128
  # Normalization: layernorm or rmsnorm (pre-norm blocks).
  m.norm = "layernorm"
  # MLP: gelu or swiglu.
  m.mlp_activation = "gelu"
  # Biases in dense layers and norms.
  m.use_bias = True
  # Share the input embedding with the output projection.
  m.tie_embeddings = True
  # Dropout rate on embeddings, attention output and MLP output (0 disables it entirely).
  m.dropout_rate = 0.0
  # Dropout rate on the attention probabilities (BERT and GPT-2 use 0.1; 0 disables it).
  m.attention_dropout_rate = 0.0
  # Compute dtype (parameters stay float32): float32 on CPU, bfloat16 on accelerators.
  m.dtype = "float32"
  # Scan over layers with nn.scan (faster compiles for deep models).
  m.scan_layers = False
  # Rematerialization of each block in the backward pass: none, full or dots (save matmul outputs).
  m.remat = "none"
  # Attention kernel: explicit (einsums and a masked float32 softmax), fused (jax.nn.dot_product_attention:
  # cuDNN's fused attention on GPUs where it applies, XLA's elsewhere), auto (fused on GPU, explicit on
  # CPU / TPU). Both compute the same function; attention dropout while training always runs explicit.
  m.attention = "auto"

  c.objective = ob = ConfigDict()
  # Pretraining objective (lmlab.objectives; each names the families it trains): causal_lm, prefix_lm,
  # mlm (masked LM), mlm_nsp (masked LM + next-sentence prediction) or span_corruption (T5).
  ob.name = "causal_lm"
  # prefix_lm: the prefix is this fraction of each document piece; 0: a uniformly random split point.
  ob.prefix_fraction = 0.0
  # mlm: fraction of the maskable (real, non-special) tokens selected for prediction.
  ob.mask_rate = 0.15
  # mlm: of the selected tokens, the fraction replaced by [MASK] and by a random token (the rest unchanged).
  ob.mask_token_rate = 0.8
  ob.random_token_rate = 0.1
  # mlm: select whole words (a sentencepiece word-start piece and its continuation pieces).
  ob.whole_word = False
  # mlm_nsp: weight of the next-sentence loss added to the masked-LM loss.
  ob.nsp_weight = 1.0
  # span_corruption: fraction of tokens noised, and the mean length of a noise span (T5: 0.15, 3).
  # The encoder reads data.seq_len tokens; raw rows and the target length follow from these (T5).
  ob.noise_density = 0.15
  ob.mean_span_length = 3.0

  c.optim = o = ConfigDict()
  # Peak learning rate.
  o.lr = 3e-3
  # Linear warmup steps from 0 to lr.
  o.warmup_steps = 50
  # Learning rate at the end of the cosine decay, as a fraction of lr.
  o.final_lr_fraction = 0.1
  # AdamW betas and epsilon.
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  # Decoupled weight decay (not applied to norms, biases and embeddings).
  o.weight_decay = 0.1
  # Clip the global gradient norm to this value (0: no clipping).
  o.grad_clip = 1.0
  # Micro-batches accumulated per update (batch_size must divide by it).
  o.grad_accum_steps = 1

  c.train = tr = ConfigDict()
  # Optimizer updates to run.
  tr.num_steps = 300
  # Print/log metrics every this many steps.
  tr.log_every = 10
  # Evaluate on the validation split every this many steps (0: only at the end).
  tr.eval_every = 100
  # Validation batches per evaluation (0: the whole validation split).
  tr.eval_batches = 0
  # Save a checkpoint every this many steps (and always at the end).
  tr.checkpoint_every = 100
  # Checkpoints to keep.
  tr.keep_checkpoints = 2
  # Seconds to wait for another process's lock on the work directory before giving up (0: fail at once;
  # a requeued job on a network filesystem may wait for a dead node's lock to lapse).
  tr.lock_wait_s = 0.0

  c.mesh = ms = ConfigDict()
  # Mesh axis sizes; -1 on one axis takes all remaining devices. data x fsdp x tensor = device count.
  ms.data = -1
  ms.fsdp = 1
  ms.tensor = 1

  c.sample = s = ConfigDict()
  # Prompts sampled at the end of training.
  s.prompts = ("The government said", "Shares in the company")
  # New tokens per sample.
  s.max_new_tokens = 40
  # Softmax temperature (0: greedy).
  s.temperature = 0.8
  # Keep only the k most likely tokens (0: off).
  s.top_k = 40
  # Keep the smallest set of tokens with this total probability (1.0: off).
  s.top_p = 0.95
  # Beam search with this many beams instead of sampling (0: sample), for every generating model:
  # decoder-only, causal LSTM/GRU and encoder-decoder.
  s.beam_size = 0
  # Beam search length penalty alpha (GNMT; 0: rank by plain log-probability).
  s.length_penalty = 0.0
  return c


# The size presets of the experiment files, as named config fields. model / data / tokenizer define the
# architecture (ARCHITECTURE: what a fine-tuning config takes from a preset); the rest sets the budget
# and cadence that go with that scale.
SIZES = {
    # Seconds on a CPU: the tests' preset.
    "tiny": {
        "model.num_layers": 2, "model.d_model": 64, "model.num_heads": 2, "model.mlp_dim": 256,
        "data.seq_len": 64, "data.batch_size": 8,
        "tokenizer.vocab_size": 512, "tokenizer.model_type": "bpe",  # bpe trains in a fraction of a second
        "tokenizer.num_sentinels": 20,
        "optim.lr": 3e-3, "optim.warmup_steps": 5,
        "train.num_steps": 20, "train.log_every": 5, "train.eval_every": 10, "train.eval_batches": 4,
        "train.checkpoint_every": 10, "sample.max_new_tokens": 8,
    },
    # A quarter of small's FLOPs per token (d_model 128): the ablations' scale on a CPU, where their
    # pretraining runs see 3-4M tokens (3-4 epochs of BBC News) within their time budget.
    "mini": {
        "model.num_layers": 4, "model.d_model": 128, "model.num_heads": 4, "model.mlp_dim": 512,
        "data.seq_len": 128, "data.batch_size": 32, "tokenizer.vocab_size": 4096,
        "optim.lr": 3e-3, "train.num_steps": 900, "train.eval_every": 300, "train.checkpoint_every": 300,
    },
    # The CPU default: about 1.2M tokens seen in 300 steps.
    "small": {
        "model.num_layers": 4, "model.d_model": 256, "model.num_heads": 4, "model.mlp_dim": 1024,
        "data.seq_len": 128, "data.batch_size": 32, "tokenizer.vocab_size": 4096,
        "optim.lr": 3e-3, "train.num_steps": 300,
    },
    # GPT-2-small / BERT-base scale for accelerators: bfloat16, scanned layers, FSDP.
    "base": {
        "model.num_layers": 12, "model.d_model": 768, "model.num_heads": 12, "model.mlp_dim": 3072,
        "model.dtype": "bfloat16", "model.scan_layers": True, "model.remat": "dots", "model.dropout_rate": 0.1,
        "data.seq_len": 1024, "data.batch_size": 256, "tokenizer.vocab_size": 16384,
        "optim.lr": 6e-4, "optim.warmup_steps": 1000,
        "train.num_steps": 20000, "train.log_every": 50, "train.eval_every": 1000, "train.eval_batches": 50,
        "train.checkpoint_every": 1000, "mesh.fsdp": -1, "mesh.data": 1,
    },
}
ARCHITECTURE = ("model", "data", "tokenizer")


def apply_size(cfg: ConfigDict, size: str, sections: tuple[str, ...] | None = None) -> ConfigDict:
  """Sets the fields of SIZES[size] (only those in `sections`, default all) on cfg and returns it."""
  if size not in SIZES:
    raise ConfigError(f"Unknown size {size!r}; sizes are {', '.join(SIZES)}.")
  for key, value in SIZES[size].items():
    if sections is None or key.split(".")[0] in sections:
      set_by_path(cfg, key, value)
  return cfg


def sized_config(name: str, size: str) -> ConfigDict:
  """default_config() at one of SIZES, named <name>_<size> (the default work directory runs/<name>_<size>)."""
  c = apply_size(default_config(), size)
  c.name = f"{name}_{size}"
  return c


def _flatten(cfg, prefix=""):
  out = {}
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if isinstance(value, ConfigDict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _check_type(name, value, default):
  if default is None or value is None:
    return
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif isinstance(default, (tuple, list)):
    ok = isinstance(value, (tuple, list))
  else:
    ok = isinstance(value, type(default))
  if not ok:
    raise ConfigError(
        f"config.{name} = {value!r} is a {type(value).__name__}, expected {type(default).__name__} "
        f"(default {default!r}).")


def validate(cfg: ConfigDict, num_devices: int | None = None, process_count: int = 1,
             schema: ConfigDict | None = None) -> None:
  """Raises ConfigError for the first problem found; checks everything that can fail before compute.

  `schema` is the config with every known key (default: default_config(); fine-tuning passes its own)."""
  schema = _flatten(default_config() if schema is None else schema)
  given = _flatten(cfg)
  for name in given:
    if name not in schema:
      close = difflib.get_close_matches(name, list(schema), n=1)
      hint = f" Did you mean config.{close[0]}?" if close else ""
      raise ConfigError(f"Unknown config key config.{name}.{hint}")
  for name, default in schema.items():
    if name not in given:
      raise ConfigError(f"config.{name} is missing; start experiment files from the default config "
                        "(lmlab.config.default_config(), or lmlab.tasks.config.default_config() to fine-tune).")
    _check_type(name, given[name], default)
  for name, options in CHOICES.items():
    if given[name] not in options:
      raise ConfigError(f"config.{name} = {given[name]!r} is not one of {', '.join(options)}.")

  def positive(*names, allow_zero=False):
    for name in names:
      if given[name] < 0 or (given[name] == 0 and not allow_zero):
        raise ConfigError(f"config.{name} = {given[name]!r} must be {'>= 0' if allow_zero else '> 0'}.")

  positive("data.seq_len", "data.batch_size", "tokenizer.vocab_size", "model.num_layers", "model.d_model",
           "model.num_heads", "model.mlp_dim", "optim.lr", "optim.grad_accum_steps", "train.num_steps",
           "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "sample.max_new_tokens",
           "data.prepare_workers")
  positive("tokenizer.num_sentinels", "tokenizer.max_sentences", "data.num_shards", "train.lock_wait_s",
           "optim.warmup_steps", "optim.weight_decay", "optim.grad_clip", "train.eval_every",
           "train.eval_batches", "sample.temperature", "sample.top_k", "sample.beam_size", "data.prefetch",
           allow_zero=True)
  m, d, o = cfg.model, cfg.data, cfg.optim
  objective = objectives.get(cfg.objective.name)
  if m.family not in objective.families:
    pairs = "; ".join(f"{family}: {', '.join(names)}" for family, names in objectives.by_family().items())
    raise ConfigError(f"config.objective.name = {cfg.objective.name!r} does not train config.model.family = "
                      f"{m.family!r}. Valid pairs are {pairs}.")
  ob = cfg.objective
  if not 0.0 <= ob.prefix_fraction < 1.0:
    raise ConfigError(f"config.objective.prefix_fraction = {ob.prefix_fraction} must be in [0, 1) (0: random).")
  if not 0.0 < ob.mask_rate < 1.0:
    raise ConfigError(f"config.objective.mask_rate = {ob.mask_rate} must be in (0, 1).")
  if not (ob.mask_token_rate >= 0 and ob.random_token_rate >= 0
          and ob.mask_token_rate + ob.random_token_rate <= 1.0):
    raise ConfigError(f"config.objective.mask_token_rate = {ob.mask_token_rate} and random_token_rate = "
                      f"{ob.random_token_rate} must be >= 0 and sum to at most 1.")
  if not (0.0 < ob.noise_density < 1.0 and ob.mean_span_length >= 1.0):
    raise ConfigError(f"config.objective.noise_density = {ob.noise_density} must be in (0, 1) and "
                      f"config.objective.mean_span_length = {ob.mean_span_length} >= 1.")
  objective.check(cfg)
  if m.family == "ngram" and not (1 <= m.ngram_order and cfg.tokenizer.vocab_size ** m.ngram_order < 2**63):
    raise ConfigError(f"config.model.ngram_order = {m.ngram_order} must be >= 1 and keep "
                      f"config.tokenizer.vocab_size ** order < 2**63 (int64 n-gram keys); lower it.")
  if m.d_model % m.num_heads:
    raise ConfigError(f"config.model.d_model = {m.d_model} is not divisible by config.model.num_heads = "
                      f"{m.num_heads}; pick a head count that divides it.")
  if m.positions == "rotary" and (m.d_model // m.num_heads) % 2:
    raise ConfigError(f"config.model.positions = 'rotary' needs an even head dim, got d_model/num_heads = "
                      f"{m.d_model // m.num_heads}.")
  for key in ("dropout_rate", "attention_dropout_rate"):
    if not 0.0 <= m[key] < 1.0:
      raise ConfigError(f"config.model.{key} = {m[key]} must be in [0, 1).")
  if m.positions == "relative" and not 2 <= m.relative_buckets <= m.relative_max_distance:
    raise ConfigError(f"config.model.positions = 'relative' needs 2 <= config.model.relative_buckets "
                      f"({m.relative_buckets}) <= config.model.relative_max_distance ({m.relative_max_distance}).")
  if not 0.0 < cfg.sample.top_p <= 1.0:
    raise ConfigError(f"config.sample.top_p = {cfg.sample.top_p} must be in (0, 1].")
  if not 0.0 <= o.final_lr_fraction <= 1.0:
    raise ConfigError(f"config.optim.final_lr_fraction = {o.final_lr_fraction} must be in [0, 1].")
  if not (0.0 <= o.b1 < 1.0 and 0.0 <= o.b2 < 1.0):
    raise ConfigError("config.optim.b1 and config.optim.b2 must be in [0, 1).")
  reserved = 7 + cfg.tokenizer.num_sentinels
  if cfg.tokenizer.vocab_size < reserved + 8:
    raise ConfigError(f"config.tokenizer.vocab_size = {cfg.tokenizer.vocab_size} is too small: ids 0-{reserved - 1} "
                      f"are special (pad, unk, bos, eos, [CLS], [SEP], [MASK] and config.tokenizer.num_sentinels "
                      f"= {cfg.tokenizer.num_sentinels} sentinels); use at least {reserved + 8}.")
  if d.source == "text_files" and not d.text_glob:
    raise ConfigError("config.data.source = 'text_files' needs config.data.text_glob, e.g. 'corpus/*.txt'.")
  if not 0.0 <= d.max_unknown_rate <= 1.0:
    raise ConfigError(f"config.data.max_unknown_rate = {d.max_unknown_rate} must be in [0, 1].")
  if not 0.0 <= d.eval_dedup <= 1.0 or (d.eval_dedup and process_count > 1):
    raise ConfigError(f"config.data.eval_dedup = {d.eval_dedup} must be in [0, 1] (0: off), and runs in one "
                      "process (it compares with the whole training split); drop --num_processes or set it to 0.")
  if not 0 < d.text_eval_percent < 100:
    raise ConfigError(f"config.data.text_eval_percent = {d.text_eval_percent} must be in (0, 100).")
  if d.batch_size % o.grad_accum_steps:
    raise ConfigError(f"config.data.batch_size = {d.batch_size} is not divisible by "
                      f"config.optim.grad_accum_steps = {o.grad_accum_steps}.")
  if o.warmup_steps > cfg.train.num_steps:
    raise ConfigError(f"config.optim.warmup_steps = {o.warmup_steps} exceeds config.train.num_steps = "
                      f"{cfg.train.num_steps}.")
  if num_devices is not None:
    dp = mesh_shape(cfg, num_devices)
    data_parallel = dp[0] * dp[1]
    micro = d.batch_size // o.grad_accum_steps
    if micro % data_parallel:
      raise ConfigError(
          f"config.data.batch_size / config.optim.grad_accum_steps = {micro} rows per micro-batch is not "
          f"divisible by the data-parallel size mesh.data x mesh.fsdp = {data_parallel}.")
    if d.batch_size % process_count:
      raise ConfigError(f"config.data.batch_size = {d.batch_size} is not divisible by the {process_count} "
                        "processes.")
    if dp[2] > 1 and (m.num_heads % dp[2] or m.mlp_dim % dp[2]):
      raise ConfigError(f"config.mesh.tensor = {dp[2]} must divide config.model.num_heads = {m.num_heads} "
                        f"and config.model.mlp_dim = {m.mlp_dim}.")


def mesh_shape(cfg: ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes resolved against the device count; raises ConfigError if they don't fit."""
  sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
  names = ["mesh.data", "mesh.fsdp", "mesh.tensor"]
  if sizes.count(-1) > 1:
    raise ConfigError("Only one of config.mesh.data/fsdp/tensor may be -1.")
  for name, size in zip(names, sizes):
    if size == 0 or size < -1:
      raise ConfigError(f"config.{name} = {size} must be a positive size or -1.")
  known = 1
  for size in sizes:
    known *= size if size != -1 else 1
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"The mesh {dict(zip(names, sizes))} does not fit {num_devices} devices: the fixed "
                        f"axes ({known}) must divide the device count.")
    sizes[sizes.index(-1)] = num_devices // known
  elif known != num_devices:
    raise ConfigError(f"The mesh data x fsdp x tensor = {sizes[0]}x{sizes[1]}x{sizes[2]} = {known} does not "
                      f"match the {num_devices} devices; set one axis to -1 to take the rest.")
  return tuple(sizes)


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
  """Parses an experiment variant string "size=small,positions=rotary" against typed defaults.

  Keys must be among `defaults`; values are converted to the default's type (bools from true/false).
  """
  options = ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(f"Unknown experiment option {item!r}; options are "
                        f"{', '.join(f'{k}=<{type(v).__name__}>' for k, v in defaults.items())}.")
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"Experiment option {key} takes true or false, got {value!r}.")
      options[key] = value.lower() in ("true", "1")
    else:
      try:
        options[key] = kind(value)
      except ValueError:
        raise ConfigError(f"Experiment option {key} takes a {kind.__name__}, got {value!r}.") from None
  return options


def set_by_path(cfg: ConfigDict, dotted: str, value) -> None:
  """cfg["a.b.c"] = value for a dotted key that must already exist."""
  *parents, leaf = dotted.split(".")
  node = cfg
  for key in parents:
    node = node[key]
  if leaf not in node:
    raise ConfigError(f"Unknown config key config.{dotted}.")
  node[leaf] = value


def json_without(cfg, dotted_keys) -> str:
  """cfg (a ConfigDict or its dict) as sorted JSON without the given dotted fields (absent ones are
  ignored): the part of a config something depends on, e.g. a compiled Trainer or a sweep point's results."""
  tree = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else copy.deepcopy(cfg)
  for dotted in dotted_keys:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
      node = node.get(key, {})
    node.pop(leaf, None)
  return json.dumps(tree, sort_keys=True, default=str)


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"model": {"d_model": 64}} -> {"model.d_model": 64}: a nested config (or summary) as dotted leaves."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out
