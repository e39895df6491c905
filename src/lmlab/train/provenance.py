"""What produced a work directory: `provenance.json` holds one entry per start of the run (a resumed run
has several), so a report never silently mixes two versions of the code.

Each entry: the command line, host and pid, start and end times and how the run ended, the git commit of
the code (with `dirty` and the diff saved beside it when the tree has uncommitted changes), the versions
of the libraries that decide the numbers, and the devices.
"""

import datetime
import importlib.metadata
import json
import os
import socket
import subprocess
import sys

import jax

FILE = "provenance.json"
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow", "tensorflow-datasets")
_SOURCE = os.path.dirname(os.path.abspath(__file__))  # inside the lmlab checkout


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", _SOURCE, *args], capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout if out.returncode == 0 else None


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    # tensorflow-cpu provides the tensorflow module under another distribution name
    return _version(name + "-cpu") if name == "tensorflow" else None


def code_state(workdir: str, index: int) -> dict:
  """The git commit of the code; when the tree is dirty, the diff against it is saved in workdir."""
  commit = _git("rev-parse", "HEAD")
  if commit is None:
    return {"commit": None, "dirty": False, "diff_file": None}  # not a git checkout (an installed copy)
  dirty = bool((_git("status", "--porcelain", "--untracked-files=no") or "").strip())
  diff_file = None
  if dirty:
    diff_file = f"provenance_{index}.diff"
    try:
      with open(os.path.join(workdir, diff_file), "w") as f:
        f.write(_git("diff", "HEAD") or "")
    except OSError as e:
      print(f"warning: could not save the code's diff in {workdir}: {e}", file=sys.stderr)
      diff_file = None
  return {"commit": commit.strip(), "dirty": dirty, "diff_file": diff_file}


def _command() -> list[str]:
  """The command line that started the run: a sweep worker's is its launcher's (LMLAB_COMMAND)."""
  try:
    return json.loads(os.environ["LMLAB_COMMAND"])
  except (KeyError, ValueError):
    return list(sys.argv)


def _load(workdir: str) -> dict:
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return {"runs": []}
  with open(path) as f:
    return json.load(f)


def _save(workdir: str, record: dict) -> None:
  """Writes provenance.json; a failure (a full disk) is a warning, never the run's error: the run's own
  error, e.g. the checkpoint save that filled the disk, is the one to report."""
  path = os.path.join(workdir, FILE)
  try:
    with open(path + ".tmp", "w") as f:
      json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)
  except OSError as e:
    print(f"warning: could not record provenance in {path}: {e}", file=sys.stderr)


def start(workdir: str) -> int:
  """Appends this start's entry (process 0 only) and returns its index."""
  if jax.process_index() != 0:
    return -1
  record = _load(workdir)
  index = len(record["runs"])
  devices = jax.devices()
  record["runs"].append({
      "started": _now(), "ended": None, "outcome": None, "argv": _command(), "host": socket.gethostname(),
      "pid": os.getpid(), "git": code_state(workdir, index), "versions": {n: _version(n) for n in LIBRARIES},
      "devices": {"kind": devices[0].device_kind, "count": len(devices), "processes": jax.process_count()}})
  _save(workdir, record)
  return index


def end(workdir: str, index: int, outcome: str) -> None:
  """Records how the start `index` ended: "finished" or "error: ..."."""
  if index < 0:
    return
  record = _load(workdir)
  record["runs"][index].update(ended=_now(), outcome=outcome)
  _save(workdir, record)
