"""The Slurm side of a sweep: submitit's SlurmExecutor with lmlab's flags, the points as one job array
(map_array) submitted inside clean_env() from a snapshot of the code (RsyncSnapshot: queued jobs do not
pick up later edits), and which jobs Slurm still holds (squeue: this cluster may have no accounting, so
sacct cannot be relied on)."""

import contextlib
import dataclasses
import datetime
import os
import shutil
import subprocess

import submitit

from lmlab.errors import UserError


@dataclasses.dataclass
class Options:
  partition: str | None = None
  time_min: int = 24 * 60
  nodes: int = 1
  tasks_per_node: int = 1
  gpus_per_node: int = 0
  cpus_per_task: int | None = None
  array_parallelism: int = 256
  sbatch: tuple[str, ...] = ()  # extra sbatch options as key=value

  def parameters(self) -> dict:
    extra = {}
    for item in self.sbatch:
      key, sep, value = item.partition("=")
      if not sep or not key:
        raise ValueError(f"--sbatch {item!r} is not key=value (e.g. --sbatch qos=high)")
      extra[key.lstrip("-").replace("-", "_")] = value
    params = {"time": self.time_min, "nodes": self.nodes, "ntasks_per_node": self.tasks_per_node,
              "array_parallelism": self.array_parallelism, "additional_parameters": extra}
    if self.partition:
      params["partition"] = self.partition
    if self.gpus_per_node:
      params["gpus_per_node"] = self.gpus_per_node
    if self.cpus_per_task:
      params["cpus_per_task"] = self.cpus_per_task
    return params


def check_available() -> None:
  if not shutil.which("sbatch"):
    raise FileNotFoundError("sbatch")


def executor(folder: str, options: Options) -> submitit.SlurmExecutor:
  ex = submitit.SlurmExecutor(folder)
  ex.update_parameters(**options.parameters())
  return ex


def _code_root() -> str | None:
  """The git checkout lmlab runs from, or None (an installed copy: nothing to snapshot)."""
  here = os.path.dirname(os.path.abspath(__file__))
  out = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
  return out.stdout.strip() if out.returncode == 0 else None


def submit(ex: submitit.SlurmExecutor, fn, argument_lists: list[list], sweep_dir: str) -> tuple[list, str | None]:
  """map_array(fn, *argument_lists) as one job array, from a code snapshot under <sweep>/code/ when lmlab
  runs from a git checkout; returns (jobs, snapshot dir or None). The workers import lmlab from the
  snapshot (PYTHONPATH) and chdir back to the launcher's directory themselves."""
  root = _code_root()
  snapshot = None
  with contextlib.ExitStack() as stack:
    stack.enter_context(submitit.helpers.clean_env())
    if root and submitit.helpers.RsyncSnapshot.available():
      stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
      snapshot = os.path.join(os.path.abspath(sweep_dir), "code", stamp)
      stack.enter_context(submitit.helpers.RsyncSnapshot(snapshot_dir=snapshot, root_dir=root))
      os.environ["PYTHONPATH"] = os.pathsep.join([os.path.join(snapshot, "src")] + [
          p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and not p.startswith(root)])
    jobs = ex.map_array(fn, *argument_lists)
  return jobs, snapshot


def active_jobs() -> set[str]:
  """Ids of the jobs and array tasks (`123_4`) Slurm still holds: pending (requeued ones too), running,
  completing."""
  out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
  return {line.strip() for line in out.stdout.splitlines() if line.strip()} if out.returncode == 0 else set()


def run_array(fn, items: list, folder: str, options: Options) -> list:
  """fn(item) for each item as one job array (from a code snapshot, see submit), waiting for all of them;
  a failed task raises one UserError with its error's last line and its log's path."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
  folder = os.path.join(folder, stamp)
  jobs, _ = submit(executor(os.path.join(folder, "%j"), options), fn, [items], folder)
  results = []
  for job in jobs:
    try:
      results.append(job.result())
    except Exception as e:  # submitit's FailedJobError / UncompletedJobError carry the worker's traceback
      lines = [line for line in str(e).splitlines() if line.strip()]
      raise UserError(f"Slurm task {job.job_id} failed: {lines[-1] if lines else e} (log: {job.paths.stderr})")
  return results
