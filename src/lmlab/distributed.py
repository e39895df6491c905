"""Joining a multi-process run: explicit flags (--coordinator_address, --num_processes, --process_id),
else an srun step with several tasks (JAX reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,
SLURM_PROCID and SLURM_LOCALID, and pins one GPU per task by SLURM_LOCALID), else the tasks of a submitit
local job (a sweep's `--executor local --tasks_per_node K`: explicit 127.0.0.1 arguments), else nothing:
one process.

A single-task job (submitit starts every array task through srun) and a partial Slurm environment (a
shell on an allocated node has SLURM_JOB_ID but no step) stay single-process (jax issue #30073).
"""

import os

initialized = False  # whether this process joined a multi-process run (launch.py shuts it down at exit)


def slurm_tasks() -> int:
  """The tasks of the srun step this process belongs to (1 outside a step)."""
  if "SLURM_JOB_ID" not in os.environ or "SLURM_STEP_NODELIST" not in os.environ:
    return 1
  try:
    return int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or 1)
  except ValueError:
    return 1


def local_tasks() -> tuple[str, int, int] | None:
  """(coordinator address, tasks, this task) of a submitit local job with several tasks, else None. The
  port follows from the job id (its controller's pid), the same for every task of the job."""
  tasks = int(os.environ.get("SUBMITIT_LOCAL_NTASKS") or 1)
  if tasks <= 1 or "SUBMITIT_LOCAL_JOB_ID" not in os.environ:
    return None
  port = 20000 + int(os.environ["SUBMITIT_LOCAL_JOB_ID"]) % 20000
  return f"127.0.0.1:{port}", tasks, int(os.environ.get("SUBMITIT_LOCAL_GLOBALID") or 0)


def initialize(coordinator_address: str | None = None, num_processes: int = 1, process_id: int = 0) -> None:
  """jax.distributed.initialize for the cases above; must run before JAX touches its backend."""
  global initialized
  import jax
  if num_processes <= 1 and slurm_tasks() <= 1 and local_tasks():
    coordinator_address, num_processes, process_id = local_tasks()
  explicit = num_processes > 1
  if not explicit and slurm_tasks() <= 1:
    return
  # Cross-process collectives of the CPU backend (no effect on GPU/TPU). Not conditional on
  # jax.default_backend(): asking initializes the backend, after which initialize() refuses to run.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()  # JAX's Slurm cluster detection fills in every argument
  initialized = True
