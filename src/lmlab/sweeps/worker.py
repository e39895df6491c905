"""What a sweep job runs: one point, on its share of the machine, ending in an outcome (never an
exception, so that submitit's debug executor never drops into pdb and every state reaches the launcher).

This module imports no JAX or TensorFlow at the top: a local worker must pin its CPUs and threads before
they start their thread pools.
"""

import dataclasses
import os
import time
import traceback


@dataclasses.dataclass(frozen=True)
class Slot:
  """One local worker's share: its CPU cores (None: all) and GPUs (None: all)."""
  index: int
  cpus: tuple[int, ...] | None = None
  gpus: tuple[int, ...] | None = None


def local_slots(max_parallel: int, cpus: list[int], gpus: list[int], bind: bool = True) -> list[Slot]:
  """max_parallel slots over the machine: contiguous equal shares of the cores (slots share cores when
  there are fewer cores than slots) and of the GPUs. bind=False: every slot gets everything."""
  if not bind:
    return [Slot(i) for i in range(max_parallel)]
  slots = []
  for i in range(max_parallel):
    if len(cpus) >= max_parallel:
      share = len(cpus) // max_parallel
      mine = tuple(cpus[i * share:(i + 1) * share])
    else:
      mine = (cpus[i % len(cpus)],)
    per = len(gpus) // max_parallel
    slots.append(Slot(i, mine, tuple(gpus[i * per:(i + 1) * per]) if per else None))
  return slots


def take(slot: Slot | None) -> None:
  """Pins this process to its slot: CPU affinity and thread-pool sizes (XLA's Eigen pool sizes itself from
  the affinity; TensorFlow's tf.data and the BLAS libraries read these variables), and its GPUs."""
  if slot is None:
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")  # a Slurm job's thread pools follow its allocation
    if cpus:
      for name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, cpus)
    return
  if slot.cpus is not None:
    os.sched_setaffinity(0, slot.cpus)
    threads = str(len(slot.cpus))
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "MKL_NUM_THREADS"):
      os.environ[name] = threads
  if slot.gpus is not None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot.gpus))


def run_point(config: dict, slot: Slot | None = None, cwd: str | None = None) -> dict:
  """Trains (or resumes) one point and returns its outcome, also written to <workdir>/outcome.json:
  state done / diverged / preempted / failed, the error line, the wall time. cwd: the launcher's working
  directory (relative paths in the config mean what they meant there; a Slurm job starts in the code
  snapshot). Under Slurm, a point stopped by a preemption or time-limit signal is requeued."""
  take(slot)
  if cwd:
    os.chdir(cwd)
  start = time.time()
  import ml_collections
  from absl import logging

  from lmlab import distributed, errors, run
  from lmlab.sweeps import points
  distributed.initialize()  # a point over several srun tasks (--nodes, --tasks_per_node)
  # As quiet as launch.py: orbax logs every save, TFDS its internals (LMLAB_VERBOSE=1 shows them).
  logging.set_verbosity(logging.INFO if os.environ.get("LMLAB_VERBOSE", "") not in ("", "0") else logging.FATAL)
  cfg = ml_collections.ConfigDict(config)
  error = stopped_by = None
  try:
    run.run(cfg)
    state = "done"
  except errors.Diverged as e:
    state, error = "diverged", str(e)
  except errors.Interrupted as e:
    state, error, stopped_by = "preempted", str(e), e.exit_code - 128
  except (errors.UserError, errors.RunStopped) as e:
    state, error = "failed", str(e)
  except Exception:  # a bug: keep the traceback's end for the status table and the log
    traceback.print_exc()
    state, error = "failed", traceback.format_exc(limit=-3)
  outcome = {"state": state, "error": error and " ".join(error.split())[:2000], "wall_time_s": time.time() - start,
             "job_id": os.environ.get("SUBMITIT_LOCAL_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
             "slot": slot and dataclasses.asdict(slot)}
  import jax
  if jax.process_index() == 0:
    points.write_outcome(cfg.workdir, outcome)
  if stopped_by and os.environ.get("SLURM_JOB_ID"):
    _requeue_on_slurm()
  return outcome


def _requeue_on_slurm() -> None:
  """The run has saved at a step boundary after a preemption or time-limit signal (SIGTERM, or the
  SIGUSR1/SIGUSR2 warning). lmlab's handlers replaced submitit's for the run; now that they are restored,
  raising submitit's signal lets it do the rest: PointJob.checkpoint() gives the resubmission,
  `scontrol requeue` puts the job back in the queue, and the requeued job resumes from the work directory."""
  import signal

  import submitit
  env = submitit.JobEnvironment()
  if env.cluster == "slurm":
    signal.raise_signal(env._usr_sig())  # submitit's own requeue handler (process 0 requeues)


class PointJob:
  """A point as a submitit Checkpointable job: checkpoint() only returns the resubmission of the same
  point (submitit saves nothing; the run saved its own state at a step boundary before)."""

  def __call__(self, config: dict, slot: Slot | None = None, cwd: str | None = None) -> dict:
    return run_point(config, slot, cwd)

  def checkpoint(self, *args, **kwargs):
    import submitit
    return submitit.helpers.DelayedSubmission(PointJob(), *args, **kwargs)
