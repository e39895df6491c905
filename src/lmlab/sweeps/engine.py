"""Runs a sweep's points on submitit: `debug` in this process, one after another; `local` as parallel
worker processes (LocalExecutor) in a bounded window of max_parallel, each pinned to its share of the
machine (submitit's local executor starts every job it is given at once: the window is ours); `slurm`
as one Slurm job array (sweeps/slurm.py), whose points requeue themselves on preemption.

Safe to re-run: finished points are skipped, interrupted ones resume from their checkpoints, failed and
diverged ones are left alone unless retry_failed. A launcher claims each point before it submits it (a
flock held while the job runs), so two launches of one sweep never train a point twice. A stop signal
to the launcher stops its workers at their next step boundary (each saves a checkpoint) and records them
as preempted; running the same command again resumes them.
"""

import datetime
import json
import os
import signal
import socket
import sys
import time

import submitit

from lmlab.errors import Interrupted
from lmlab.sweeps import points as points_lib
from lmlab.sweeps import worker
from lmlab.train import signals

EXECUTORS = ("debug", "local", "slurm")
SWEEP_FILE, EVENTS_FILE = "sweep.json", "sweep.jsonl"
STOP_GRACE_S = 120  # how long stopped workers get to save before they are killed


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record_points(sweep_dir: str, points: list[points_lib.Point], command: list[str]) -> None:
  """sweep.json: every point any launch of this sweep declared (a grown grid keeps the old points)."""
  path = os.path.join(sweep_dir, SWEEP_FILE)
  known = read_points(sweep_dir)
  for p in points:
    known[p.name] = {"name": p.name, "hash": p.key, "overrides": p.overrides}
  os.makedirs(sweep_dir, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"command": command, "points": list(known.values())}, f, indent=2, default=str)
  os.replace(path + ".tmp", path)


def read_points(sweep_dir: str) -> dict:
  try:
    with open(os.path.join(sweep_dir, SWEEP_FILE)) as f:
      return {p["name"]: p for p in json.load(f)["points"]}
  except (OSError, ValueError, KeyError):
    return {}


def _event(sweep_dir: str, point: points_lib.Point, state: str, **fields) -> None:
  """One line of sweep.jsonl, the sweep's log of submissions and outcomes."""
  row = {"time": _now(), "point": point.name, "hash": point.key, "overrides": point.overrides, "state": state,
         "host": socket.gethostname(), **fields}
  with open(os.path.join(sweep_dir, EVENTS_FILE), "a") as f:
    f.write(json.dumps(row, default=str) + "\n")


def _executor(kind: str, folder: str, timeout_min: float, tasks: int = 1):
  if kind == "debug":
    return submitit.DebugExecutor(folder)
  executor = submitit.LocalExecutor(folder)
  # submitit's local default is 2 minutes. tasks > 1: each point is a multi-process run of that many
  # local processes (lmlab.distributed joins them over 127.0.0.1).
  executor.update_parameters(timeout_min=timeout_min, tasks_per_node=tasks)
  return executor


def _visible_gpus() -> list[int]:
  visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
  return [int(g) for g in visible.split(",") if g.strip().isdigit()]


class _Running:
  def __init__(self, point, job, claim_fd, slot, started):
    self.point, self.job, self.claim_fd, self.slot, self.started = point, job, claim_fd, slot, started


def run(points: list[points_lib.Point], sweep_dir: str, executor: str = "local", max_parallel: int = 1,
        retry_failed: bool = False, timeout_min: float = 24 * 60, cpu_binding: bool = True,
        poll_s: float = 1.0, out=print, slurm_options=None, tasks: int = 1) -> dict:
  """Runs every point that is not finished (see the module docstring) and returns {state: count} over
  all points. Raises Interrupted when a signal stopped the sweep."""
  if executor not in EXECUTORS:
    raise ValueError(f"executor {executor!r} is not one of {EXECUTORS}")
  if executor == "debug":
    max_parallel = 1
  sweep_dir = os.path.abspath(sweep_dir)
  os.environ["LMLAB_COMMAND"] = json.dumps(sys.argv)  # the command a worker's provenance records
  todo, skipped = [], {}
  queued = _queued_on_slurm(sweep_dir) if executor == "slurm" else {}
  for p in points:
    s = points_lib.state(p.workdir)
    if p.name in queued and s != "done":
      skipped[p.name] = f"queued or running as Slurm job {queued[p.name]}"
      continue
    if s == "done" or (s in ("failed", "diverged") and not retry_failed):
      skipped[p.name] = s
    else:
      todo.append(p)  # a running one waits for its claim below
  for name, s in skipped.items():
    out(f"  {name}: {s}" + (", skipped (--retry_failed runs it again)" if s in ("failed", "diverged") else
                            ", skipped"))
  if todo:
    from lmlab.sweeps import prepare  # imports TFDS: only when something will run
    prepare.shared(todo, out)
  if executor == "slurm":
    return _run_slurm(points, todo, sweep_dir, slurm_options, poll_s, out, retry_failed)
  return _run_here(points, todo, sweep_dir, executor, max_parallel, timeout_min, cpu_binding, poll_s, out,
                   retry_failed, tasks)


def _run_here(points, todo, sweep_dir: str, executor: str, max_parallel: int, timeout_min: float,
              cpu_binding: bool, poll_s: float, out, retry_failed: bool = False, tasks: int = 1) -> dict:
  """The debug and local executors: a window of max_parallel claimed points, each on its slot."""
  slots = worker.local_slots(max_parallel, sorted(os.sched_getaffinity(0)), _visible_gpus(), cpu_binding)
  submitter = _executor(executor, os.path.join(sweep_dir, "submitit", "%j"), timeout_min, tasks)
  os.environ["PYTHONPATH"] = os.pathsep.join(  # workers import lmlab even from an uninstalled checkout
      [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
      + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
  running: list[_Running] = []
  walls = []
  pending, elsewhere = list(todo), []  # elsewhere: claimed by another launch (or run) of this sweep
  with signals.StopRequests() as stop:
    while (pending or running or elsewhere) and stop.signum is None:
      for point in list(elsewhere):  # its claim released: finished there, or left for us to run
        fd = _try_claim(point)
        if fd is not None:
          os.close(fd)
          elsewhere.remove(point)
          if points_lib.state(point.workdir) in ("pending", "preempted"):
            pending.append(point)
      free = [s for s in slots if all(r.slot != s for r in running)]
      while pending and free and stop.signum is None:
        point = pending.pop(0)
        fd = _try_claim(point)
        if fd is None:
          elsewhere.append(point)
          out(f"  {point.name}: running in another launch of this sweep; waiting for it")
          continue
        if not _still_to_run(point, retry_failed):
          os.close(fd)
          out(f"  {point.name}: {points_lib.state(point.workdir)} in another launch of this sweep")
          continue
        slot = free.pop(0)
        job = submitter.submit(worker.PointJob(), point.config.to_dict(), None if executor == "debug" else slot)
        _event(sweep_dir, point, "running", job_id=job.job_id, slot=slot.index)
        out(f"  {point.name}: started (job {job.job_id}" + (f", cpus {list(slot.cpus)})" if slot.cpus and
                                                             executor != "debug" else ")"))
        running.append(_Running(point, job, fd, slot, time.time()))
        if executor == "debug":
          break  # runs inside done(), below
      for r in [r for r in running if r.job.done()]:
        running.remove(r)
        outcome = _outcome(r)
        walls.append(outcome.get("wall_time_s") or time.time() - r.started)
        os.close(r.claim_fd)
        _event(sweep_dir, r.point, outcome["state"], job_id=r.job.job_id, wall_time_s=outcome.get("wall_time_s"),
               error=outcome.get("error"))
        out(f"  {r.point.name}: {outcome['state']}" + (f": {outcome['error']}" if outcome.get("error") else ""))
        out(_progress(points, running, walls, max_parallel))
        if executor == "debug" and outcome["state"] == "preempted":
          stop.signum = stop.signum or signal.SIGTERM  # the in-process run got the signal, not us
      if (running or elsewhere) and stop.signum is None:
        time.sleep(poll_s)
    if stop.signum is not None:
      _stop_workers(running, sweep_dir, out)
      raise Interrupted(f"sweep stopped by {stop.name}: {len(running)} running point(s) saved and preempted; "
                        "run the same command to resume.", stop.signum)
  return counts(points)


def _run_slurm(points, todo, sweep_dir: str, options, poll_s: float, out, retry_failed: bool = False) -> dict:
  """The points to run as one Slurm job array (Slurm's array parallelism is the window); waits for them.
  A stop signal to the launcher leaves the jobs to Slurm: they keep running, --status follows them."""
  from lmlab.sweeps import slurm
  claims = {}
  for point in todo:  # another launch of this sweep may be submitting the same points right now
    fd = _try_claim(point)
    if fd is None:
      out(f"  {point.name}: held by another launch of this sweep, skipped")
    elif not _still_to_run(point, retry_failed):
      os.close(fd)
    else:
      claims[point.name] = fd
  todo = [p for p in todo if p.name in claims]
  if not todo:
    return counts(points)
  ex = slurm.executor(os.path.join(sweep_dir, "submitit", "%j"), options)
  jobs, snapshot = slurm.submit(ex, worker.PointJob(), [[p.config.to_dict() for p in todo], [None] * len(todo),
                                                        [os.getcwd()] * len(todo)], sweep_dir)
  out(f"  submitted {len(jobs)} points as Slurm job array {jobs[0].job_id.split('_')[0]}"
      + (f" (code snapshot {snapshot})" if snapshot else ""))
  for point, job in zip(todo, jobs):
    _event(sweep_dir, point, "queued", job_id=job.job_id, executor="slurm")
  waiting = list(zip(todo, jobs))
  walls = []
  with signals.StopRequests() as stop:
    while waiting and stop.signum is None:
      time.sleep(poll_s)
      active = slurm.active_jobs()
      for point, job in list(waiting):
        if job.job_id in active and not job.paths.result_pickle.exists():
          continue
        waiting.remove((point, job))
        os.close(claims.pop(point.name))
        state = points_lib.state(point.workdir)
        outcome = points_lib.read_outcome(point.workdir) or {}
        if state in ("pending", "preempted") and outcome.get("state") != "preempted":  # it died, saying nothing
          outcome = _died(point, job.paths.stderr)
          state = "failed"
        walls.append(outcome.get("wall_time_s") or 0.0)
        _event(sweep_dir, point, state, job_id=job.job_id, wall_time_s=outcome.get("wall_time_s"),
               error=outcome.get("error") if state != "done" else None)
        out(f"  {point.name}: {state}" + (f": {outcome['error']}" if state != "done" and outcome.get("error") else ""))
        out(_progress(points, [], walls, options.array_parallelism))
    if stop.signum is not None:
      raise Interrupted(f"sweep launcher stopped by {stop.name}; its {len(waiting)} Slurm job(s) keep running "
                        f"(python launch.py sweep --status {sweep_dir}; scancel to stop them).", stop.signum)
  return counts(points)


def _queued_on_slurm(sweep_dir: str) -> dict:
  """{point name: Slurm job id} of the points whose latest submission Slurm still holds (so a second
  launch of the sweep does not submit them again)."""
  from lmlab.sweeps import slurm
  latest = {}
  path = os.path.join(sweep_dir, EVENTS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      for row in map(json.loads, f):
        if row.get("job_id"):
          latest[row["point"]] = str(row["job_id"])
  active = slurm.active_jobs()
  return {name: job for name, job in latest.items() if job in active}


def _try_claim(point: points_lib.Point) -> int | None:
  """The point's claim (an fd to close when done), or None while another launcher holds it or a live
  process trains in its directory (e.g. a worker that outlived a killed launcher)."""
  fd = points_lib.claim(point.workdir)
  if fd is not None and points_lib.lock_holder(point.workdir):
    os.close(fd)
    return None
  return fd


def _still_to_run(point: points_lib.Point, retry_failed: bool) -> bool:
  """Whether a point just claimed still needs running: another launch may have finished it (or seen it
  fail) between this launch's first look and its claim."""
  state = points_lib.state(point.workdir)
  return state in ("pending", "preempted") or (retry_failed and state in ("failed", "diverged"))


def _outcome(r: _Running) -> dict:
  """The worker's outcome: its return value, else its outcome.json, else a failure naming the log."""
  try:
    outcome = r.job.result()
    if isinstance(outcome, dict) and "state" in outcome:
      return outcome
  except Exception:  # the worker process died (killed, out of memory) before returning
    pass
  saved = points_lib.read_outcome(r.point.workdir)
  if saved and os.path.getmtime(os.path.join(r.point.workdir, points_lib.OUTCOME)) >= r.started:
    return saved
  return _died(r.point, r.job.paths.stderr)


def _died(point: points_lib.Point, log) -> dict:
  """A job that ended without an outcome (an import error, killed, out of memory): recorded as failed in
  the point's outcome.json, so that --status and the next launch see it."""
  outcome = {"state": "failed", "error": f"the job ended without an outcome (killed, or an error before the run "
                                         f"started); see {log}"}
  points_lib.write_outcome(point.workdir, outcome)
  return outcome


def _stop_workers(running: list[_Running], sweep_dir: str, out) -> None:
  """SIGTERM to each worker (it saves at its next step boundary and exits), then wait; a job that is not
  done after STOP_GRACE_S is cancelled."""
  for r in running:
    holder = points_lib.lock_holder(r.point.workdir)
    if holder and holder.endswith(socket.gethostname()):
      os.kill(int(holder.split()[1]), signal.SIGTERM)
    else:
      r.job.cancel()  # not training yet: nothing to save
  deadline = time.time() + STOP_GRACE_S
  while any(not r.job.done() for r in running) and time.time() < deadline:
    time.sleep(0.5)
  for r in running:
    if not r.job.done():
      r.job.cancel()
    _event(sweep_dir, r.point, "preempted", job_id=r.job.job_id)
    out(f"  {r.point.name}: preempted")
    os.close(r.claim_fd)


def counts(points: list[points_lib.Point]) -> dict:
  """{state: number of points} as their directories say."""
  return _tally(points_lib.state(p.workdir) for p in points)


def _tally(states) -> dict:
  result = {}
  for s in states:
    result[s] = result.get(s, 0) + 1
  return result


def _summary(c: dict, total: int) -> str:
  """'3/6 done, 1 running, 0 failed, 0 diverged, 0 preempted' from {state: count}."""
  return (f"{c.get('done', 0)}/{total} done, {c.get('running', 0)} running, {c.get('failed', 0)} failed, "
          f"{c.get('diverged', 0)} diverged, {c.get('preempted', 0)} preempted")


def _progress(points, running, walls, max_parallel) -> str:
  mine = {r.point.name for r in running}  # this launch's jobs, also those still starting up or ending
  c = counts([p for p in points if p.name not in mine])
  c["running"] = c.get("running", 0) + len(running)
  total, done = len(points), c.get("done", 0)
  left = max(total - done - c.get("failed", 0) - c.get("diverged", 0) - len(running) / 2, 0)
  eta = ""
  if walls and left:
    seconds = sum(walls) / len(walls) * left / max_parallel
    eta = f"; ETA {seconds // 60:.0f}m{seconds % 60:02.0f}s"
  return f"progress: {_summary(c, total)}{eta}"


def status(sweep_dir: str) -> str:
  """The table of a sweep's points (from sweep.json, their directories and sweep.jsonl) and one progress
  line."""
  known = read_points(sweep_dir)
  if not known:
    raise FileNotFoundError(sweep_dir)
  last = {}
  events = os.path.join(sweep_dir, EVENTS_FILE)
  if os.path.exists(events):
    with open(events) as f:
      for row in map(json.loads, f):
        last[row["point"]] = dict(last.get(row["point"], {}), **{k: v for k, v in row.items() if v is not None})
  lines = ["| point | state | job | wall time | note |", "|---|---|---|---|---|"]
  states = []
  for name in known:
    s = points_lib.state(os.path.join(sweep_dir, name))
    states.append(s)
    ev = last.get(name, {})
    wall = f"{ev['wall_time_s']:.0f} s" if isinstance(ev.get("wall_time_s"), (int, float)) else "-"
    note = (ev.get("error") or "")[:100] if s in ("failed", "diverged", "preempted") else ""
    lines.append(f"| {name} | {s} | {ev.get('job_id', '-')} | {wall} | {note} |")
  c = _tally(states)
  lines.append(f"{_summary(c, len(known))}, {c.get('pending', 0)} pending")
  return "\n".join(lines)


def search(base, space: dict, sweep_dir: str, executor: str = "local", workers: int = 1,
           timeout_min: float = 24 * 60, cpu_binding: bool = True, slurm_options=None, poll_s: float = 1.0,
           out=print) -> str:
  """Runs an Optuna search (sweeps/search.py) with `workers` workers sharing its study; returns the line
  naming the best trial. Re-running continues the study up to its number of trials."""
  from lmlab.sweeps import prepare, search as search_lib
  sweep_dir = os.path.abspath(sweep_dir)
  base_point = points_lib.expand(base, [{}], sweep_dir)[0]
  prepare.shared([base_point], out)  # the TFDS data, the base tokenizer and token shards, once
  os.environ["LMLAB_COMMAND"] = json.dumps(sys.argv)
  args = (base.to_dict(), space, sweep_dir, os.getcwd())
  if executor == "slurm":
    from lmlab.sweeps import slurm
    ex = slurm.executor(os.path.join(sweep_dir, "submitit", "%j"), slurm_options)
    jobs, _ = slurm.submit(ex, search_lib.SearchWorker(), [[a] * workers for a in args] + [list(range(workers))],
                           sweep_dir)
  else:
    ex = _executor(executor, os.path.join(sweep_dir, "submitit", "%j"), timeout_min)
    slots = worker.local_slots(workers, sorted(os.sched_getaffinity(0)), _visible_gpus(), cpu_binding)
    jobs = [ex.submit(search_lib.SearchWorker(), *args, slot.index, slot if executor == "local" else None)
            for slot in slots[:1 if executor == "debug" else workers]]
  out(f"search {sweep_dir}: {space['trials']} trials of {', '.join(space['params'])} by {len(jobs)} worker(s) "
      f"(jobs {', '.join(j.job_id for j in jobs)}), optimizing {space['metric']} ({space['direction']})")
  with signals.StopRequests() as stop:
    while not all(j.done() for j in jobs) and stop.signum is None:
      time.sleep(poll_s)
    if stop.signum is not None:
      for j in jobs:
        j.cancel()
      raise Interrupted(f"search stopped by {stop.name}; run the same command to continue the study.", stop.signum)
  for j in jobs:
    try:
      j.result()
    except Exception as e:  # a worker that crashed: the others may have finished the study
      out(f"  search worker {j.job_id} failed: {' '.join(str(e).split())[-300:]}")
  return search_lib.best(sweep_dir, space)

