r"""Fine-tuning: any pretrained run (or the same architecture from scratch) on a downstream task, and the
non-neural baselines (TF-IDF + linear SVM, lead) on the same task, split, label fraction and seed.

Pretrain first (each is one command of the README; results land in runs/<name>_small), then e.g.:
  python launch.py --config experiments/finetune.py:task=topic,fraction=0.1 --config.init_from=runs/gpt_small
  python launch.py --config experiments/finetune.py:task=topic,baseline=true        TF-IDF + linear SVM
  python launch.py --config experiments/finetune.py:task=headline,baseline=true     lead (first words)
  python launch.py --config experiments/finetune.py:task=topic,family=gpt           from scratch (control)
  python launch.py --config experiments/finetune.py:task=headline --config.init_from=runs/t5_small
  python launch.py predict --workdir runs/finetune_topic_gpt_small --text "Shares in the bank rose..."
  python launch.py --config experiments/finetune.py:task=disfl_qa --config.init_from=runs/bert_small
      (question answering; the first run prepares disfl_qa from --config.data.tfds_manual_dir, see README)
  python launch.py predict --workdir runs/finetune_disfl_qa_bert_small --context "..." --text "Who ...?"
With init_from the model, its objective and seq_len come from the pretraining run; the size preset must
match that run's (it sets the tokenizer, which must be the same).

Expected (2-core CPU): a neural run takes 1-4 minutes, a baseline run seconds. BBC topic accuracy of
pretrained models against the same architecture from scratch, with the protocol that holds up (pooling,
learning rate per system, chunks): experiments/label_efficiency.py and the README's table.
Variants (comma separated after the colon):
  size=tiny|mini|small     must match the pretraining run's preset
  task=topic|headline|classification_file|generation_file|disfl_qa|squad   (files: --config.task.train_file=...)
  family=gpt|bert|t5|lstm|gru   architecture for from-scratch runs (ignored with init_from)
  fraction=F               config.task.label_fraction (stratified subset of the training labels)
  baseline=true            the task's non-neural baseline instead of a neural model: TF-IDF + linear SVM
                           (classification), the lead, the first words of the article (generation), or
                           the context sentence sharing most words with the question (question answering;
                           --config.finetune.baseline=no_answer: always "")
  freeze=true              train only the head (linear probe)
The label-efficiency ablation (pretraining, selection on validation and seeds in one command) is
experiments/label_efficiency.py.
"""

from lmlab import config as config_lib
from lmlab.tasks import config as task_config

TASKS = {"topic": "bbc_topic", "headline": "bbc_headline", "classification_file": "classification_file",
         "generation_file": "generation_file", "disfl_qa": "disfl_qa", "squad": "squad"}
# Architecture of from-scratch runs: (model.family, objective it is built for, rnn cell).
FAMILIES = {"gpt": ("decoder", "causal_lm", "lstm"), "bert": ("encoder", "mlm", "lstm"),
            "t5": ("encoder_decoder", "span_corruption", "lstm"), "lstm": ("rnn", "causal_lm", "lstm"),
            "gru": ("rnn", "causal_lm", "gru")}


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, size="small", task="topic", family="gpt", fraction=1.0, baseline=False,
                              freeze=False)
  if opts.task not in TASKS:
    raise config_lib.ConfigError(f"Unknown task={opts.task!r}; tasks are {', '.join(TASKS)}.")
  if opts.family not in FAMILIES:
    raise config_lib.ConfigError(f"Unknown family={opts.family!r}; families are {', '.join(FAMILIES)}.")
  # The architecture sections of the size preset (model, data, tokenizer); training lengths are derived.
  c = config_lib.apply_size(task_config.default_config(), opts.size, config_lib.ARCHITECTURE)
  c.name = f"finetune_{opts.task}"  # the work directory adds what is fine-tuned: runs/finetune_topic_gpt_small
  c.model.family, c.objective.name, c.model.rnn_cell = FAMILIES[opts.family]
  if opts.family in ("lstm", "gru"):
    c.model.num_layers = 2  # as experiments/lstm.py
  c.task.name = TASKS[opts.task]
  c.task.label_fraction = opts.fraction
  if opts.baseline:  # the task's non-neural baseline
    c.finetune.baseline = {"classification": "tfidf_svm", "generation": "lead", "qa": "overlap"}[
        task_config.TASKS[c.task.name]]
  c.finetune.freeze_body = opts.freeze
  if task_config.TASKS[c.task.name] == "qa":
    # ~22k context windows per epoch of disfl_qa at size=small: 500 updates (~0.7 epoch, ~10 minutes on
    # 2 cores) and two evaluations, each decoding every validation window for the generating families.
    c.train.num_steps, c.train.eval_every, c.finetune.epochs = 500, 250, 1.0
  if opts.size == "tiny":
    c.finetune.min_steps, c.finetune.epochs = 4, 0.1
    c.train.num_steps, c.train.eval_every, c.train.log_every = 8, 4, 4
    c.task.max_target_len = 8
  return c
