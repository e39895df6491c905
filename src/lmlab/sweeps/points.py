"""The points of a sweep and their state on disk.

A point is the experiment's config with one override dict applied. Its work directory is
`<sweep>/<readable overrides>-<hash>`, the hash over the config without the fields that do not change
results, so re-running a sweep finds its finished points again, and an edited grid keeps the points it
shares with the old one. The state of a point is read from its directory, never from memory:

  done       metrics.json is there
  running    a live process holds the point's run lock (.lock)
  failed / diverged / preempted
             the worker's outcome.json says so (a point killed without one, with files, is preempted)
  pending    none of the above
"""

import copy
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import socket

import ml_collections

from lmlab import config as config_lib
from lmlab.errors import ConfigError

OUTCOME = "outcome.json"
CLAIM = ".claim"
# Config fields that do not change a run's results: left out of a point's hash. (Evaluation cadence
# changes a fine-tuning run's keep-best choice, so it counts there.)
NOT_RESULTS = ("workdir", "name", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
               "train.lock_wait_s", "sample")
NOT_PRETRAINING_RESULTS = ("train.eval_every",)
STATES = ("pending", "running", "done", "failed", "diverged", "preempted")


@dataclasses.dataclass
class Point:
  overrides: dict
  config: ml_collections.ConfigDict
  key: str  # the results hash
  workdir: str

  @property
  def name(self) -> str:
    return os.path.basename(self.workdir)


def results_hash(cfg) -> str:
  """8 hex digits over the config's fields that change results."""
  ignored = NOT_RESULTS + (() if "task" in cfg else NOT_PRETRAINING_RESULTS)
  return hashlib.sha256(config_lib.json_without(cfg, ignored).encode()).hexdigest()[:8]


def readable(overrides: dict) -> str:
  """`positions=rotary,lr=0.001` from {"model.positions": "rotary", "optim.lr": 1e-3}: the last part of
  each key (the whole key where two overrides share it), filesystem-safe and at most ~80 characters."""
  if not overrides:
    return "base"
  leaves = [key.split(".")[-1] for key in overrides]
  parts = []
  for (key, value), leaf in zip(overrides.items(), leaves):
    name = leaf if leaves.count(leaf) == 1 else key
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    if key == "init_from" and isinstance(value, str):  # a pretraining run's directory: its last part
      shown = os.path.basename(value.rstrip(os.sep))
    parts.append(f"{name}={shown}")
  text = re.sub(r"[^A-Za-z0-9_.,=+-]+", "_", ",".join(parts))
  return text[:80]


# An override key that is not a config field: the point's base config is this experiment ("gpt.py:size=small",
# a file beside the sweep's own experiment file) instead of the sweep's (sweeps/stages.py).
EXPERIMENT = "experiment"


def expand(base: ml_collections.ConfigDict, overrides_list: list[dict], sweep_dir: str,
           load_experiment=None) -> list[Point]:
  """One Point per override dict (an unknown key or a wrong type is a ConfigError naming the point);
  override dicts that give the same config are one point. A dict with an "experiment" key starts from
  load_experiment(that spec) instead of `base`."""
  points, seen = [], set()
  for i, overrides in enumerate(overrides_list):
    if not isinstance(overrides, dict):
      raise ConfigError(f"get_sweep() item {i} is {overrides!r}, not a dict of config overrides.")
    try:
      if EXPERIMENT in overrides and load_experiment is None:
        raise ConfigError("an 'experiment' override needs a staged sweep (sweeps/stages.py)")
      cfg = copy.deepcopy(base) if EXPERIMENT not in overrides else load_experiment(overrides[EXPERIMENT])
      for key, value in overrides.items():
        if key != EXPERIMENT:
          config_lib.set_by_path(cfg, key, value)
    except (ConfigError, KeyError, AttributeError, TypeError, ValueError) as e:
      raise ConfigError(f"get_sweep() item {i} {overrides}: {' '.join(str(e).split())}") from e
    key = results_hash(cfg)
    if key in seen:
      continue
    seen.add(key)
    workdir = os.path.join(sweep_dir, f"{readable(overrides)}-{key}")
    cfg.workdir = workdir
    points.append(Point(dict(overrides), cfg, key, workdir))
  return points


def lock_holder(workdir: str) -> str | None:
  """"pid N on host H" of a live process training in workdir, else None (read from the run lock's text:
  probing the flock itself could make a starting run fail to take it). A holder on another host cannot be
  checked from here and counts as live."""
  try:
    with open(os.path.join(workdir, ".lock")) as f:
      text = f.read().strip()
  except OSError:
    return None
  match = re.fullmatch(r"pid (\d+) on host (.+)", text)
  if not match:
    return None
  if match.group(2) != socket.gethostname():
    return text
  try:
    os.kill(int(match.group(1)), 0)
  except ProcessLookupError:
    return None
  except PermissionError:
    pass  # alive, another user's
  # The pid is alive; if its run is over, the lock file still names it: it only counts while held.
  return text if _flock_held(workdir) else None


def _flock_held(workdir: str) -> bool:
  """Whether some process holds the flock of workdir/.lock, from /proc/locks (no lock taken)."""
  try:
    inode = os.stat(os.path.join(workdir, ".lock")).st_ino
    with open("/proc/locks") as f:
      return any(line.split()[1] == "FLOCK" and line.split()[5].rsplit(":", 1)[-1] == str(inode)
                 for line in f if len(line.split()) > 5)
  except OSError:
    return True  # cannot tell: assume it is


def state(point_dir: str) -> str:
  """The point's state on disk (see the module docstring)."""
  if os.path.exists(os.path.join(point_dir, "metrics.json")):
    return "done"
  if lock_holder(point_dir):
    return "running"
  outcome = read_outcome(point_dir)
  if outcome and outcome["state"] in ("failed", "diverged", "preempted"):
    return outcome["state"]
  if os.path.exists(os.path.join(point_dir, "config.json")):
    return "preempted"  # started, then killed before it could say so
  return "pending"


def read_outcome(point_dir: str) -> dict | None:
  try:
    with open(os.path.join(point_dir, OUTCOME)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_outcome(point_dir: str, outcome: dict) -> None:
  os.makedirs(point_dir, exist_ok=True)
  path = os.path.join(point_dir, OUTCOME)
  with open(path + ".tmp", "w") as f:
    json.dump(outcome, f, indent=2)
  os.replace(path + ".tmp", path)


def claim(point_dir: str, wait: bool = False) -> int | None:
  """An exclusive claim on the point for this launcher (an open fd holding a flock on <point>/.claim;
  close it to release), or None when another launch of the sweep holds it (wait=True: block until it is
  free). The kernel drops the claim when the launcher dies."""
  os.makedirs(point_dir, exist_ok=True)
  fd = os.open(os.path.join(point_dir, CLAIM), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EAGAIN, errno.EACCES):
      return None
    raise
  return fd
