r"""lmlab's command line.

  python launch.py [--config experiments/gpt.py:size=small] [--config.optim.lr=1e-3 ...]   train (resumes)
  python launch.py sample --workdir runs/gpt_small --prompt "The government said"        sample
      (continues the prompt; fills its [MASK]s for masked-LM runs; decodes the targets of a corrupted
      prompt such as "Shares <extra_id_0> sharply" for encoder-decoder runs; --beam_size for beam search,
      with config.sample.length_penalty; a prefix-LM run reads the prompt as its bidirectional prefix)
  python launch.py sweep --config experiments/gpt.py:size=tiny --workdir runs/pos --max_parallel 2
      (runs get_sweep()'s points as parallel workers, skipping finished ones, stage by stage when it
      declares stages; --executor debug: in this process; --status runs/pos: the table of points; then
      python -m lmlab.report runs/pos, or the experiment's own report())
  python launch.py --config experiments/finetune.py:task=topic --config.init_from=runs/gpt_small   fine-tune
  python launch.py prepare --config experiments/gpt.py --workers 2                        prepare the data
      (the corpus tokenizer and the token shards of both splits into the data cache, which every later run
      with that corpus and tokenizer reads; runs prepare what is missing themselves; --executor slurm: one
      array task per shard)
  python launch.py plan --config experiments/gpt.py:size=base --device_memory_gb 16      memory / cost plan
      (compiles the train step for the mesh without training: memory per device, FLOPs, step time at
      --mfu; an error when it does not fit)
  python launch.py predict --workdir runs/finetune_topic_gpt_small --text "Shares rose..." [--input file]
      (a fine-tuned run's label with class probabilities, or its generated output; --input: one text per line)
  python launch.py predict --workdir runs/finetune_disfl_qa_bert_small --context "..." --text "Who ...?"
      (question answering: the answer to each question about the context, or no answer)

Multi-host: start one process per host with --num_processes, --process_id and --coordinator_address
(host:port of process 0); every process runs the same command. Under srun with several tasks
(`srun -n 2 python launch.py ...`) the processes find each other from Slurm's environment.
"""

import copy
import importlib.util
import inspect
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (reading TFDS datasets only) stays quiet

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
flags.DEFINE_integer("beam_size", None, "sample: beams for beam search (0: sample).")
flags.DEFINE_integer("seed", 0, "sample: random seed.")
flags.DEFINE_multi_string("text", None, "predict: text(s) to classify or generate from (question answering: "
                          "questions about --context).")
flags.DEFINE_string("context", None, "predict, question answering: the passage the questions are about.")
flags.DEFINE_string("input", None, "predict: a UTF-8 file with one text per line.")
flags.DEFINE_float("device_memory_gb", None, "plan: memory per device to fit in (default: the device's own, "
                   "which CPUs do not report).")
flags.DEFINE_float("mfu", 0.4, "plan: model FLOPs utilization the step-time estimate assumes.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: index of this process.")
flags.DEFINE_enum("executor", "local", ["local", "debug", "slurm"],
                  "sweep: local (parallel worker processes through submitit), debug (in this process) or slurm "
                  "(one Slurm job array); prepare: local (--workers processes) or slurm (an array task per shard).")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "prepare: local processes tokenizing shards at once.")
flags.DEFINE_string("partition", None, "sweep --executor slurm: the partition (default: the cluster's).")
flags.DEFINE_integer("nodes", 1, "sweep --executor slurm: nodes per point (a multi-host run over them).")
flags.DEFINE_integer("tasks_per_node", 1, "sweep: processes per point (slurm: per node, one per GPU; local: a "
                     "multi-process run on 127.0.0.1).")
flags.DEFINE_integer("gpus_per_node", 0, "sweep --executor slurm: GPUs per node.")
flags.DEFINE_integer("cpus_per_task", None, "sweep --executor slurm: CPUs per process.")
flags.DEFINE_integer("array_parallelism", 256, "sweep --executor slurm: array tasks running at once.")
flags.DEFINE_multi_string("sbatch", [], "sweep --executor slurm: extra sbatch option key=value (repeatable), "
                          "e.g. --sbatch qos=high --sbatch account=lm.")
flags.DEFINE_integer("max_parallel", 1, "sweep: points running at once (local executor).")
flags.DEFINE_bool("retry_failed", False, "sweep: run failed and diverged points again.")
flags.DEFINE_float("timeout_min", 24 * 60, "sweep: time limit of each point's job, in minutes.")
flags.DEFINE_bool("cpu_binding", True, "sweep: pin each local worker to its share of the CPU cores and threads.")
flags.DEFINE_bool("report_plots", True, "sweep: draw the report's plots at the end.")
flags.DEFINE_bool("search", False, "sweep: an Optuna search over get_search_space() instead of the grid; "
                  "--max_parallel (slurm: --array_parallelism) workers share one study.")
flags.DEFINE_string("status", None, "sweep: print the table of points and states of this sweep directory.")
flags.DEFINE_bool("verbose", False, "Show the Python traceback of input errors too (also LMLAB_VERBOSE=1).")
FLAGS = flags.FLAGS
COMMANDS = ("train", "sample", "predict", "sweep", "prepare", "plan")


def _init_distributed():
  from lmlab import distributed
  if FLAGS.num_processes > 1 and not FLAGS.coordinator_address:
    raise app.UsageError("--num_processes > 1 needs --coordinator_address=host:port of process 0.")
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def _experiment_module():
  path = flags.FLAGS["config"].config_filename.split(":")[0]  # without the variants ("gpt.py:size=tiny")
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def train(cfg):
  from lmlab import run
  if FLAGS.workdir:
    cfg.workdir = FLAGS.workdir
  run.run(cfg)


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
  for text, result in zip(texts, predict_lib.predict_workdir(FLAGS.workdir, texts, FLAGS.context)):
    shown = text if len(text) <= 80 else text[:77] + "..."
    if "answer" in result:
      print(f"{shown} -> {result['answer'] or '(no answer in the context)'}")
      continue
    if "output" in result:
      print(f"{shown} -> {result['output']}")
      continue
    values = result.get("probabilities") or result["scores"]
    kind = "probabilities" if "probabilities" in result else "SVM scores"
    ranked = ", ".join(f"{name} {value:.3f}" for name, value in sorted(values.items(), key=lambda kv: -kv[1]))
    print(f"{shown} -> {result['label']} ({kind}: {ranked})")


def plan(cfg):
  from lmlab.train import plan as plan_lib
  result = plan_lib.plan(cfg, FLAGS.device_memory_gb, FLAGS.mfu)
  print(plan_lib.describe(result))
  plan_lib.check_fits(result)


def sweep(cfg):
  from lmlab import errors
  from lmlab.sweeps import engine, points, stages
  if FLAGS.status:
    try:
      print(engine.status(FLAGS.status))
    except FileNotFoundError:
      raise app.UsageError(f"--status {FLAGS.status}: no sweep.json there; give the --workdir of a sweep.")
    return
  module = _experiment_module()
  if FLAGS.search:
    return _search(cfg, module)
  if not hasattr(module, "get_sweep"):
    raise app.UsageError(f"{module.__file__} declares no get_sweep().")
  if FLAGS.max_parallel < 1:
    raise app.UsageError(f"--max_parallel={FLAGS.max_parallel} must be at least 1.")
  sweep_dir = FLAGS.workdir or cfg.workdir or os.path.join("runs", cfg.name + "_sweep")
  cfg.workdir = None
  variant = flags.FLAGS["config"].config_filename.partition(":")[2] or None  # "size=tiny" of "x.py:size=tiny"
  declared = list(module.get_sweep(variant) if inspect.signature(module.get_sweep).parameters else module.get_sweep())
  window = FLAGS.array_parallelism if FLAGS.executor == "slurm" else 1 if FLAGS.executor == "debug" else FLAGS.max_parallel
  options = dict(executor=FLAGS.executor, max_parallel=FLAGS.max_parallel, retry_failed=FLAGS.retry_failed,
                 timeout_min=FLAGS.timeout_min, cpu_binding=FLAGS.cpu_binding, slurm_options=_slurm_options(),
                 tasks=FLAGS.tasks_per_node)
  if stages.is_staged(declared):
    print(f"sweep {sweep_dir}: {len(declared)} stages, executor {FLAGS.executor}, at most {window} at once")
    grid, counts = stages.run(cfg, declared, sweep_dir, os.path.dirname(os.path.abspath(module.__file__)),
                              sys.argv, **options)
  else:
    grid = points.expand(cfg, declared, sweep_dir)
    engine.record_points(sweep_dir, grid, sys.argv)
    print(f"sweep {sweep_dir}: {len(grid)} points, executor {FLAGS.executor}, at most {window} at once")
    counts = engine.run(grid, sweep_dir, **options)
  print(engine.status(sweep_dir))
  if counts.get("done") and hasattr(module, "report"):  # the experiment's own report (e.g. paired differences)
    for line in module.report(sweep_dir, FLAGS.report_plots):
      print(line)
  elif counts.get("done"):
    from lmlab import report
    result = report.report(sweep_dir, plots=FLAGS.report_plots)
    print(result["markdown"])
    print("wrote " + ", ".join(result["paths"]))
  unfinished = {k: v for k, v in counts.items() if k != "done"}
  if unfinished:
    raise errors.RunStopped(f"sweep {sweep_dir}: {counts.get('done', 0)} of {len(grid)} points done; "
                            + ", ".join(f"{v} {k}" for k, v in unfinished.items())
                            + f" (python launch.py sweep --status {sweep_dir}; --retry_failed reruns failed ones).")


def prepare(cfg):
  import time

  from lmlab import config as config_lib
  from lmlab.data import cache, shards, sources
  if "task" in cfg:
    raise app.UsageError("prepare takes a pretraining config (fine-tuning task data is read by the run).")
  if FLAGS.workers < 1:
    raise app.UsageError(f"--workers={FLAGS.workers} must be at least 1.")
  config_lib.validate(cfg, process_count=FLAGS.num_processes)
  slurm_options = _slurm_options()
  sources.check(cfg.data)
  tokenizer_path = cache.corpus_tokenizer(cfg)
  print(f"Tokenizer: {tokenizer_path}")
  for split in (cfg.data.train_split, cfg.data.eval_split):
    tasks = shards.plan(cfg.data, split, tokenizer_path, FLAGS.num_processes)
    todo = [t for t in tasks if not shards.is_prepared(t)]
    start = time.perf_counter()
    if slurm_options and todo:
      from lmlab.sweeps import slurm
      print(f"Preparing {len(todo)} of {len(tasks)} token shard(s) of split {split!r} as a Slurm job array")
      slurm.run_array(shards.prepare_shard, todo, os.path.join(cache.cache_dir(cfg.data), "slurm"), slurm_options)
    else:
      shards.prepare(tasks, FLAGS.workers)
    wall = time.perf_counter() - start
    metas = [shards.read_meta(t) for t in tasks]  # every run checks its shards' sizes and checksums
    totals = shards.totals(metas)
    text_mb = totals["text_bytes"] / 1e6
    line = (f"split {split!r}: {len(tasks)} shard(s) in {tasks[0].directory}: {totals['num_docs']:,} documents, "
            f"{totals['num_tokens']:,} tokens from {text_mb:,.1f} MB of text")
    if todo:
      done = [m for t, m in zip(tasks, metas) if t in todo]
      mb, seconds = sum(m["text_bytes"] for m in done) / 1e6, sum(m["seconds"] for m in done)
      line += (f"; prepared {len(done)} now in {wall:.1f} s: {mb / wall:.1f} MB/s in all, "
               f"{mb / max(seconds, 1e-9):.1f} MB/s per worker")
    print(line)


def _slurm_options():
  from lmlab.sweeps import slurm
  if FLAGS.executor != "slurm":
    return None
  try:
    slurm.check_available()
  except FileNotFoundError:
    raise app.UsageError("--executor slurm needs Slurm's sbatch on this machine (a login node of the cluster); "
                         "use --executor local here.")
  options = slurm.Options(FLAGS.partition, int(FLAGS.timeout_min), FLAGS.nodes, FLAGS.tasks_per_node,
                          FLAGS.gpus_per_node, FLAGS.cpus_per_task, FLAGS.array_parallelism, tuple(FLAGS.sbatch))
  try:
    options.parameters()
  except ValueError as e:
    raise app.UsageError(str(e))
  return options


def _search(cfg, module):
  from lmlab.sweeps import engine, search
  if not hasattr(module, "get_search_space"):
    raise app.UsageError(f"{module.__file__} declares no get_search_space() (sweep --search needs one).")
  space = search.check_space(module.get_search_space())
  sweep_dir = FLAGS.workdir or cfg.workdir or os.path.join("runs", cfg.name + "_search")
  cfg.workdir = None
  workers = FLAGS.max_parallel if FLAGS.executor != "slurm" else FLAGS.array_parallelism
  print(engine.search(cfg, space, sweep_dir, FLAGS.executor, min(workers, space["trials"]), FLAGS.timeout_min,
                      FLAGS.cpu_binding, _slurm_options()))
  from lmlab import errors, report
  try:
    result = report.report(sweep_dir, plots=FLAGS.report_plots)
  except errors.UserError as e:  # no trial finished (all pruned or failed)
    print(f"no report: {e}")
    return
  print(result["markdown"])


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
  if _verbose():
    os.environ["LMLAB_VERBOSE"] = "1"  # and in sweep workers
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
    elif command == "prepare":
      prepare(copy.deepcopy(FLAGS.config).unlock())
    elif command == "plan":
      plan(copy.deepcopy(FLAGS.config).unlock())
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
  from lmlab import distributed
  if code == 0 and distributed.initialized:
    import jax
    jax.distributed.shutdown()  # the others may still be leaving the coordination service
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == "__main__":
  sys.path.insert(0, os.path.join(HERE, "src"))
  app.run(main, flags_parser=_parse_flags)
