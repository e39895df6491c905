"""The fine-tuning config: lmlab.config's schema plus `init_from`, `task` and `finetune`, its validation,
and `resolve`, which takes the architecture from the pretraining run named by `init_from`.

With init_from set, the model (except dropout), the objective it was built for and data.seq_len come
from that run's config.json: the checkpoint defines them. The tokenizer is part of the experiment on both
sides, so a task config whose tokenizer differs from the run's is an error, not silently replaced.
"""

import json
import os

import ml_collections

from lmlab import config as config_lib
from lmlab import objectives
from lmlab.errors import ConfigError
from lmlab.models import heads
from lmlab.tasks import data, qa_inputs

TASKS = data.KINDS  # task name -> "classification" | "generation"
POOLINGS = ("auto",) + heads.POOLINGS
METRICS = {"classification": ("auto", "accuracy", "macro_f1", "loss"),
           "generation": ("auto", "rougeL", "rouge1", "rouge2", "bleu", "loss"),
           "qa": ("auto", "f1", "exact_match", "loss")}
# baseline -> the task kind it serves
BASELINES = {"tfidf_svm": "classification", "lead": "generation", "overlap": "qa", "no_answer": "qa"}


def default_config() -> ml_collections.ConfigDict:
  """lmlab.config.default_config() plus the fine-tuning fields, with their defaults."""
  c = config_lib.default_config()
  c.name = "finetune"
  # A pretraining work directory (its latest checkpoint) or one of its checkpoint steps
  # (DIR/checkpoints/STEP); None: train the same architecture from scratch (the control).
  c.init_from = ml_collections.config_dict.placeholder(str)

  c.task = t = ml_collections.ConfigDict()
  # bbc_topic (5-way topic classification), bbc_headline (article -> headline), classification_file
  # or generation_file (the user's CSV / JSONL files below); disfl_qa or squad (question answering).
  t.name = "bbc_topic"
  # Fraction of the training examples kept (stratified by class, chosen by config.seed).
  t.label_fraction = 1.0
  # The user's files (.csv with a header row, or .jsonl); validation/test files may be "" to carve those
  # splits out of train_file by hashing each example's text with the percentages below.
  t.train_file = ""
  t.validation_file = ""
  t.test_file = ""
  t.validation_percent = 10
  t.test_percent = 10
  # Column (CSV) or key (JSONL) names.
  t.text_field = "text"
  t.label_field = "label"
  t.source_field = "source"
  t.target_field = "target"
  # Generation (and generated answers): target tokens (without EOS) trained on and generated at most.
  t.max_target_len = 24
  # Classification: a text longer than one row is read as up to this many rows (chunks of seq_len), each
  # pooled, their features combined (1: the text is cut after one row).
  t.max_chunks = 1
  # Question answering (tasks/qa_inputs.py): the TFDS dataset ("": disfl_qa for disfl_qa, squad/v2.0 for
  # squad); question tokens kept; context tokens between the starts of overlapping windows; the longest
  # span (tokens) a span head may answer.
  t.qa_tfds_name = ""
  t.max_question_len = 32
  t.doc_stride = 64
  t.max_answer_len = 30
  # From-scratch runs: "corpus" keeps the tokenizer trained on config.data's corpus, as pretraining does
  # (so a scratch control differs from a pretrained run only in initialization); "task" trains one on all
  # of the task's training texts (not only the labelled fraction), with at most tokenizer.vocab_size pieces
  # (fewer if the texts do not support that many): for text unlike the corpus (another language).
  t.tokenizer = "corpus"

  c.finetune = f = ml_collections.ConfigDict()
  # Classification pooling of the body's hidden states (models/heads.py): first ([CLS]), pooler (BERT's
  # dense + tanh on [CLS], transferred from an mlm_nsp checkpoint), last (the last real token: EOS / [SEP]),
  # last_text (the token before it), mean; auto: pooler for the encoder, mean for the rest (decoders and
  # causal RNNs never train EOS as an input: pretraining's targets across a document boundary have weight 0).
  f.pooling = "auto"
  # Train only the task head (a linear probe); the body's parameters stay as restored.
  f.freeze_body = False
  # Layer-wise learning-rate decay: layer l of N gets lr * layer_decay ** (N + 1 - l); the embeddings are
  # layer 0, the head N + 1 (1.0: one learning rate).
  f.layer_decay = 1.0
  # Training length: epochs over the (label-fraction) training set, at least min_steps and at most
  # config.train.num_steps updates.
  f.epochs = 3.0
  f.min_steps = 50
  # Linear warmup over this fraction of the updates (config.optim.warmup_steps is not used).
  f.warmup_fraction = 0.1
  # Stop after this many evaluations (every config.train.eval_every steps) without a better validation
  # metric (0: never stop early; the best checkpoint is still the one evaluated). Slow starters (LSTMs,
  # BERT on its plateau) can sit several evaluations on a plateau before they improve.
  f.patience = 0
  # Validation metric that selects the best checkpoint; auto: accuracy (classification), rougeL (generation).
  f.metric = "auto"
  # Checkpoints kept, best first by the metric; the best is evaluated on the test split at the end.
  f.keep_best = 1
  # Generation: beam search with this many beams (0: greedy decoding), length penalty config.sample.length_penalty.
  f.beam_size = 0
  # A non-neural baseline on the same task instead of a neural model: "tfidf_svm" (TF-IDF + linear SVM,
  # classification), "lead" (the first words of the source, as many as the median training target;
  # generation), "overlap" (the context sentence sharing the most words with the question) or "no_answer"
  # (always "") for question answering. "": none.
  f.baseline = ""

  c.train.eval_every = 25
  c.optim.warmup_steps = 0  # unused: the warmup is finetune.warmup_fraction of the derived steps
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.01
  c.sample.temperature = 0.0  # generation is evaluated greedily
  return c


def kind(cfg) -> str:
  return TASKS[cfg.task.name]


def metric(cfg) -> tuple[str, str]:
  """(validation metric name, "max" or "min") that selects the best checkpoint."""
  name = cfg.finetune.metric
  if name == "auto":
    name = {"classification": "accuracy", "generation": "rougeL", "qa": "f1"}[kind(cfg)]
  return name, "min" if name == "loss" else "max"


def pooling(cfg) -> str:
  if cfg.finetune.pooling != "auto":
    return cfg.finetune.pooling
  return "pooler" if cfg.model.family == "encoder" else "mean"


def qa_mode(cfg) -> str:
  """How a model answers questions: "span" (extracts them: encoders and bidirectional rnns) or
  "generation" (decoders, causal rnns and encoder-decoders write them)."""
  extracts = cfg.model.family == "encoder" or (cfg.model.family == "rnn" and _bidirectional(cfg))
  return "span" if extracts else "generation"


def prefix_input(cfg) -> bool:
  """Whether the task input is read as a bidirectional prefix (a decoder pretrained as a prefix LM)."""
  return _model_option(cfg, "prefix")


def _bidirectional(cfg) -> bool:
  """Whether the model reads its whole input (an RNN trained with a masked-LM objective)."""
  return _model_option(cfg, "bidirectional")


def _model_option(cfg, name: str) -> bool:
  return objectives.get(cfg.objective.name).model_options.get(name, False)


def split_init_from(init_from: str) -> tuple[str, int | None]:
  """(pretraining work directory, checkpoint step or None for the latest) from config.init_from."""
  path = os.path.normpath(init_from)
  parent, leaf = os.path.split(path)
  if leaf.isdigit() and os.path.basename(parent) == "checkpoints":
    return os.path.dirname(parent), int(leaf)
  return path, None


def pretrained_config(init_from: str) -> ml_collections.ConfigDict:
  workdir, _ = split_init_from(init_from)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"config.init_from = {init_from!r}: {path} does not exist. Give the work directory of "
                      "a pretraining run (python launch.py --config experiments/<file>.py), or one of its "
                      "checkpoint steps DIR/checkpoints/STEP.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def resolve(cfg) -> ml_collections.ConfigDict:
  """A copy of cfg with the pretrained run's architecture (when init_from is set); raises ConfigError
  for a pretraining run the task cannot start from."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  if cfg.get("task") is None or cfg.get("finetune") is None:
    raise ConfigError("This is not a fine-tuning config: start from lmlab.tasks.config.default_config() "
                      "(see experiments/finetune.py).")
  if not cfg.init_from:
    return cfg
  pre = pretrained_config(cfg.init_from)
  if "family" not in pre.get("model", {}) or "objective" not in pre:
    raise ConfigError(f"config.init_from = {cfg.init_from!r} was written by an older lmlab (its config.json has "
                      "no model.family / objective); pretrain again with this version.")
  if "task" in pre:
    raise ConfigError(f"config.init_from = {cfg.init_from!r} is a fine-tuning run; start from the pretraining "
                      "run it came from.")
  if pre.model.family == "ngram":
    raise ConfigError(f"config.init_from = {cfg.init_from!r} is an n-gram run: it has no parameters to "
                      "fine-tune.")
  # The fields that define a tokenizer's file (the run's file is copied; how it was sampled does not matter).
  differ = [key for key in ("vocab_size", "model_type", "character_coverage", "num_sentinels")
            if cfg.tokenizer[key] != pre.tokenizer.get(key)]
  if differ:
    pairs = ", ".join(f"tokenizer.{k} = {cfg.tokenizer[k]!r} (pretrained: {pre.tokenizer.get(k)!r})" for k in differ)
    raise ConfigError(f"The task config's tokenizer does not match the pretraining run {cfg.init_from}: {pairs}. "
                      "A checkpoint only works with its own vocabulary: use the same size preset as the "
                      "pretraining run, or set those config.tokenizer values.")
  # The checkpoint's architecture; fields newer than its run keep their defaults (which change nothing),
  # and the dropout rates are the task's own.
  dropout = {key: cfg.model[key] for key in ("dropout_rate", "attention_dropout_rate")}
  model = config_lib.default_config().model
  model.update({key: value for key, value in pre.model.items() if key in model})
  model.update(dropout)
  cfg.model = model
  cfg.objective = pre.objective
  cfg.data.seq_len = pre.data.seq_len
  return cfg


def validate(cfg, num_devices: int | None = None, process_count: int = 1) -> None:
  """lmlab.config.validate against the fine-tuning schema, then the fine-tuning checks."""
  config_lib.validate(cfg, num_devices, process_count, schema=default_config())
  t, f, m = cfg.task, cfg.finetune, cfg.model
  if t.name not in TASKS:
    raise ConfigError(f"config.task.name = {t.name!r} is not one of {', '.join(TASKS)}.")
  task_kind = kind(cfg)
  for key, options in (("finetune.pooling", POOLINGS), ("finetune.metric", METRICS[task_kind]),
                       ("finetune.baseline", ("",) + tuple(BASELINES))):
    value = cfg.finetune[key.split(".")[1]]
    if value not in options:
      raise ConfigError(f"config.{key} = {value!r} is not one of {', '.join(map(repr, options))} for a "
                        f"{task_kind} task.")
  if cfg.init_from is not None and not isinstance(cfg.init_from, str):
    raise ConfigError(f"config.init_from = {cfg.init_from!r} must be a path (or None to train from scratch).")
  if t.tokenizer not in ("corpus", "task"):
    raise ConfigError(f"config.task.tokenizer = {t.tokenizer!r} is not one of 'corpus', 'task'.")
  if t.tokenizer == "task" and cfg.init_from:
    raise ConfigError("config.task.tokenizer = 'task' trains a new tokenizer, but a pretrained model (config."
                      "init_from) only reads its own; use it for from-scratch runs (init_from = None).")
  if t.max_chunks < 1:
    raise ConfigError(f"config.task.max_chunks = {t.max_chunks} must be >= 1 (1: a text is cut after one row).")
  if not 0.0 < t.label_fraction <= 1.0:
    raise ConfigError(f"config.task.label_fraction = {t.label_fraction} must be in (0, 1].")
  if not (0 <= t.validation_percent and 0 <= t.test_percent and t.validation_percent + t.test_percent < 100):
    raise ConfigError("config.task.validation_percent and test_percent must be >= 0 and sum to less than 100.")
  if t.name.endswith("_file") and not t.train_file:
    raise ConfigError(f"config.task.name = {t.name!r} needs config.task.train_file (a .csv or .jsonl file).")
  if not 0.0 < f.layer_decay <= 1.0:
    raise ConfigError(f"config.finetune.layer_decay = {f.layer_decay} must be in (0, 1] (1: no decay).")
  if not (f.epochs > 0 and f.min_steps >= 1 and 0.0 <= f.warmup_fraction < 1.0 and f.patience >= 0
          and f.keep_best >= 1 and f.beam_size >= 0):
    raise ConfigError("config.finetune needs epochs > 0, min_steps >= 1, warmup_fraction in [0, 1), "
                      "patience >= 0, keep_best >= 1 and beam_size >= 0.")
  if f.baseline:
    if BASELINES[f.baseline] != task_kind:
      raise ConfigError(f"config.finetune.baseline = {f.baseline!r} is a {BASELINES[f.baseline]} baseline; "
                        f"config.task.name = {t.name!r} is a {task_kind} task.")
    return
  if m.family == "ngram":
    raise ConfigError("config.model.family = 'ngram' has no parameters to fine-tune; use "
                      "config.finetune.baseline (tfidf_svm or lead) for a non-neural baseline.")
  if task_kind == "qa":
    _validate_qa(cfg)
  if task_kind == "generation" or (task_kind == "qa" and qa_mode(cfg) == "generation"):
    causal = m.family == "decoder" or (m.family == "rnn" and not _bidirectional(cfg))
    if not (causal or m.family == "encoder_decoder"):
      raise ConfigError(f"config.task.name = {t.name!r} generates text: it needs a decoder, causal rnn or "
                        f"encoder_decoder model, not {m.family} trained with {cfg.objective.name}.")
    if f.freeze_body:
      raise ConfigError("config.finetune.freeze_body = True leaves nothing to train on a generation task "
                        "(the language-model head is part of the body).")
    if task_kind == "generation" and m.family != "encoder_decoder" and cfg.data.seq_len < t.max_target_len + 3 + 8:
      raise ConfigError(f"config.data.seq_len = {cfg.data.seq_len} leaves fewer than 8 source tokens beside "
                        f"config.task.max_target_len = {t.max_target_len}; lower max_target_len.")
  if t.max_target_len < 1:
    raise ConfigError(f"config.task.max_target_len = {t.max_target_len} must be >= 1.")


def _validate_qa(cfg) -> None:
  t = cfg.task
  if not (t.max_question_len >= 1 and t.doc_stride >= 1 and t.max_answer_len >= 1):
    raise ConfigError("config.task.max_question_len, doc_stride and max_answer_len must be >= 1.")
  if t.name == "disfl_qa" and t.qa_tfds_name and not t.qa_tfds_name.startswith("disfl_qa"):
    raise ConfigError(f"config.task.qa_tfds_name = {t.qa_tfds_name!r}: task disfl_qa reads the disfl_qa "
                      "dataset; use task.name = 'squad' for SQuAD-format datasets.")
  if cfg.finetune.baseline:
    return
  # A question of max_question_len tokens must leave room for a useful window of context.
  budget = qa_inputs.question_budget(qa_mode(cfg), cfg.model.family, cfg.data.seq_len, t.max_question_len,
                                     t.max_target_len)
  if budget < 8:
    raise ConfigError(f"config.data.seq_len = {cfg.data.seq_len} leaves {budget} context tokens per window "
                      f"beside a question of config.task.max_question_len = {t.max_question_len} tokens"
                      + ("" if qa_mode(cfg) == "span" else f" and an answer of config.task.max_target_len = "
                         f"{t.max_target_len}") + "; lower those (at least 8 context tokens are needed).")
