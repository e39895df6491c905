r"""lmlab's command line.

  python launch.py [--config experiments/gpt.py:size=small] [--config.optim.lr=1e-3 ...]   train (resumes)
  python launch.py sample --workdir runs/gpt_small --prompt "The government said"        sample
      (continues the prompt; fills its [MASK]s for masked-LM runs; decodes the targets of a corrupted
      prompt such as "Shares <extra_id_0> sharply" for encoder-decoder runs, --beam_size for beam search)
  python launch.py sweep --config experiments/gpt.py:size=tiny                            run get_sweep()
  python launch.py --config experiments/finetune.py:task=topic --config.init_from=runs/gpt_small   fine-tune
  python launch.py predict --workdir runs/finetune_topic_gpt_small --text "Shares rose..." [--input file]
      (a fine-tuned run's label with class probabilities, or its generated output; --input: one text per line)

Multi-host: start one process per host with --num_processes, --process_id and --coordinator_address
(host:port of process 0); every process runs the same command.
"""

import copy
import importlib.util
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (input pipeline only) stays quiet

HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(HERE, "experiments", "gpt.py"),
                                "Experiment file with get_config(arg), as path[:variants].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory (overrides config.workdir); required by sample.")
flags.DEFINE_multi_string("prompt", None, "sample: prompt(s) to continue (default: config.sample.prompts).")
flags.DEFINE_integer("max_new_tokens", None, "sample: new tokens per prompt.")
flags.DEFINE_float("temperature", None, "sample: softmax temperature (0: greedy).")
flags.DEFINE_integer("top_k", None, "sample: keep the k most likely tokens (0: off).")
flags.DEFINE_float("top_p", None, "sample: nucleus probability mass (1: off).")
flags.DEFINE_integer("beam_size", None, "sample: beams for encoder-decoder beam search (0: sample).")
flags.DEFINE_integer("seed", 0, "sample: random seed.")
flags.DEFINE_multi_string("text", None, "predict: text(s) to classify or generate from.")
flags.DEFINE_string("input", None, "predict: a UTF-8 file with one text per line.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: index of this process.")
flags.DEFINE_bool("verbose", False, "Show the Python traceback of input errors too (also LMLAB_VERBOSE=1).")
FLAGS = flags.FLAGS
COMMANDS = ("train", "sample", "predict", "sweep")


def _init_distributed():
  import jax
  if FLAGS.num_processes > 1:
    if not FLAGS.coordinator_address:
      raise app.UsageError("--num_processes > 1 needs --coordinator_address=host:port of process 0.")
    # Cross-process collectives of the CPU backend (no effect on GPU/TPU). Not conditional on
    # jax.default_backend(): asking initializes the backend, after which initialize() refuses to run.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def _experiment_module():
  path = flags.FLAGS["config"].config_filename.split(":")[0]  # without the variants ("gpt.py:size=tiny")
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(cfg):
  """Fine-tuning for a config with a task section (experiments/finetune.py), the n-gram baseline, or
  pretraining."""
  if "task" in cfg:
    from lmlab.tasks import finetune
    return finetune.run(cfg)
  if cfg.model.family == "ngram":
    from lmlab.train import ngram_run
    return ngram_run.run(cfg)
  from lmlab.train import loop
  return loop.train_and_evaluate(cfg)


def train(cfg):
  if FLAGS.workdir:
    cfg.workdir = FLAGS.workdir
  _run(cfg)


def sample():
  from lmlab.decode import complete
  if not FLAGS.workdir:
    raise app.UsageError("sample needs --workdir, the work directory of a training run.")
  overrides = {k: getattr(FLAGS, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "beam_size")}
  for prompt, text in complete.sample_workdir(FLAGS.workdir, FLAGS.prompt, FLAGS.seed, overrides):
    print(f"{prompt} -> {text}")


def predict():
  from lmlab.tasks import predict as predict_lib
  if not FLAGS.workdir:
    raise app.UsageError("predict needs --workdir, the work directory of a fine-tuning run.")
  texts = list(FLAGS.text or [])
  if FLAGS.input:
    if not os.path.exists(FLAGS.input):
      raise app.UsageError(f"--input {FLAGS.input} does not exist.")
    with open(FLAGS.input, encoding="utf-8") as f:
      texts += [line.strip() for line in f if line.strip()]
  for text, result in zip(texts, predict_lib.predict_workdir(FLAGS.workdir, texts)):
    shown = text if len(text) <= 80 else text[:77] + "..."
    if "output" in result:
      print(f"{shown} -> {result['output']}")
      continue
    values = result.get("probabilities") or result["scores"]
    kind = "probabilities" if "probabilities" in result else "SVM scores"
    ranked = ", ".join(f"{name} {value:.3f}" for name, value in sorted(values.items(), key=lambda kv: -kv[1]))
    print(f"{shown} -> {result['label']} ({kind}: {ranked})")


def sweep(cfg):
  from lmlab import config as config_lib
  module = _experiment_module()
  if not hasattr(module, "get_sweep"):
    raise app.UsageError(f"{module.__file__} declares no get_sweep().")
  base_dir = FLAGS.workdir or cfg.workdir or os.path.join("runs", cfg.name + "_sweep")
  for i, overrides in enumerate(module.get_sweep()):
    run_cfg = copy.deepcopy(cfg).unlock()
    for key, value in overrides.items():
      config_lib.set_by_path(run_cfg, key, value)
    name = ",".join(f"{k}={v}" for k, v in overrides.items()).replace(os.sep, "_")
    run_cfg.workdir = os.path.join(base_dir, f"{i:02d}_{name}")
    print(f"=== sweep run {i}: {name}")
    _run(run_cfg)


def _one_line(error: BaseException) -> str:
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections: "'dmodel'\nDid you mean "d_model"...?"
    text = "no config field " + text.strip("'\"").replace("\\'", "'").replace("\\n", " ")
  return " ".join(text.split())


def _verbose() -> bool:
  return os.environ.get("LMLAB_VERBOSE", "") not in ("", "0") or ("verbose" in FLAGS and FLAGS["verbose"].value)


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag or config override (an unknown key, a wrong type) as one
  `error:` line instead of a traceback."""
  try:
    return FLAGS(argv)
  except Exception as e:  # absl and ml_collections raise many types for a bad command line
    if _verbose():
      raise
    sys.exit(f"error: bad command line: {_one_line(e)} (python launch.py --helpfull lists the flags)")


def main(argv):
  # orbax logs every save, and the errors it also raises (those become one `error:` line); TFDS warns
  # about its own internals. --verbose shows them.
  logging.set_verbosity(logging.INFO if _verbose() else logging.FATAL)
  from lmlab import errors
  try:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] not in COMMANDS):
      raise app.UsageError(f"Unknown command {' '.join(argv[1:])!r}; commands are {', '.join(COMMANDS)}.")
    command = argv[1] if len(argv) == 2 else "train"
    _init_distributed()
    if command == "sample":
      sample()
    elif command == "predict":
      predict()
    else:
      (sweep if command == "sweep" else train)(copy.deepcopy(FLAGS.config).unlock())
  except (errors.UserError, app.UsageError, errors.RunStopped) as e:
    if _verbose():
      traceback.print_exc()
    print(f"error: {_one_line(e)}", file=sys.stderr)
    _exit(getattr(e, "exit_code", 1))
  except BaseException:  # a bug: the traceback, then the same prompt exit
    traceback.print_exc()
    _exit(1)
  _exit(0)


def _exit(code: int) -> None:
  """Ends the process now. Background threads (orbax's asynchronous saves) must not keep a failed run
  alive at interpreter shutdown: a worker that hangs after an error would hold its sweep slot or cluster
  allocation forever. Every save this process meant to keep has been waited for by then."""
  if code == 0 and FLAGS.num_processes > 1:
    import jax
    jax.distributed.shutdown()  # the others may still be leaving the coordination service
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == "__main__":
  sys.path.insert(0, os.path.join(HERE, "src"))
  app.run(main, flags_parser=_parse_flags)
