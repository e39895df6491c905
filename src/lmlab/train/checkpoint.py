"""Orbax checkpoints of the train state, with two checks that catch damaged checkpoints (orbax does not).

A checkpoint holds the train state (params, optimizer state, step) and a small JSON record. The data
position is the step itself (the input order is a pure function of seed and step) and dropout keys are
derived from (seed, step), so restoring the state resumes the run exactly.

Checks: the record carries a fingerprint of the state's values, compared after every restore; and once a
save has committed, the SHA-256 of each of its files is written to checkpoint_checksums/<step>.json beside
the checkpoints directory and verified before a restore reads them.
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lmlab.errors import CheckpointError


@jax.jit
def fingerprint(tree) -> jax.Array:
  """A cheap checksum of every leaf, to detect a damaged restore (orbax does not)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves) + len(leaves)


def make_manager(workdir: str, keep: int, best_metric: str | None = None,
                 best_mode: str = "max") -> ocp.CheckpointManager:
  """Keeps the `keep` latest checkpoints, or with best_metric the `keep` best by that metric (saved
  with each checkpoint, see save) in best_mode ("max" or "min")."""
  best = {}
  if best_metric:
    best = dict(best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode,
                keep_checkpoints_without_metrics=False)
  _ignore_orphaned_reads()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True,
                                         **best)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, state, record: dict, metrics: dict | None = None) -> None:
  """Starts an async save of `state` at its step; `record` (JSON) is saved beside it, `metrics` ranks it
  for a best-k manager. A failed save (now, or the previous one's background write) is a CheckpointError."""
  step = int(jax.device_get(state.step))
  record = dict(record, step=step, fingerprint=float(jax.device_get(fingerprint(state))))
  write_checksums(manager)  # of the saves that have committed since the last call
  if jax.process_index() == 0 and os.path.exists(_checksum_path(manager, step)):
    os.remove(_checksum_path(manager, step))  # a step saved again (after a fallback) gets new ones
  with _save_errors(manager, step):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               record=ocp.args.JsonSave(record)), metrics=metrics, force=True)


def close_on_exit(cleanup: contextlib.ExitStack, manager: ocp.CheckpointManager) -> ocp.CheckpointManager:
  """Registers `manager` with an ExitStack that closes it (waiting for its saves in flight) when the run
  ends, also by an exception: a later run in the same process must not race its background writes and
  deletions. An error while closing after another error is dropped (the first one is the news)."""
  def close():
    try:
      manager.close()
    except Exception:  # pylint: disable=broad-except
      if sys.exc_info()[0] is None:
        raise
  cleanup.callback(close)
  return manager


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the saves in flight and closes the manager; a failed save is a CheckpointError."""
  with _save_errors(manager, manager.latest_step()):
    manager.wait_until_finished()
  write_checksums(manager)
  manager.close()


def _checksum_path(manager: ocp.CheckpointManager, step: int) -> str:
  directory = str(manager.directory)
  return os.path.join(os.path.dirname(directory), "checkpoint_checksums", f"{step}.json")


def _file_digests(step_dir: str) -> dict:
  """{relative path: SHA-256} of every file of a checkpoint."""
  digests = {}
  for folder, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(folder, name)
      sha = hashlib.sha256()
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          sha.update(chunk)
      digests[os.path.relpath(path, step_dir)] = sha.hexdigest()
  return digests


def write_checksums(manager: ocp.CheckpointManager) -> None:
  """Process 0 writes the file checksums of every committed checkpoint that has none yet, and drops
  those of checkpoints the manager has deleted. Nothing while a save is still being written."""
  if jax.process_index() != 0 or manager.is_saving_in_progress():
    return
  steps = set(manager.all_steps())
  folder = os.path.dirname(_checksum_path(manager, 0))
  for name in os.listdir(folder) if os.path.isdir(folder) else []:
    if name.endswith(".json") and name[:-5].isdigit() and int(name[:-5]) not in steps:
      os.remove(os.path.join(folder, name))
  for step in steps:
    path = _checksum_path(manager, step)
    if not os.path.exists(path):
      os.makedirs(folder, exist_ok=True)
      with open(path + ".tmp", "w") as f:
        json.dump(_file_digests(os.path.join(str(manager.directory), str(step))), f, indent=0)
      os.replace(path + ".tmp", path)


def _verify_checksums(manager: ocp.CheckpointManager, step: int, where: str) -> None:
  """CheckpointError if the checkpoint's files differ from the checksums written after it committed
  (a checkpoint without them, e.g. from a run killed right after saving, is checked by its fingerprint)."""
  path = _checksum_path(manager, step)
  if not os.path.exists(path):
    return
  with open(path) as f:
    expected = json.load(f)
  found = _file_digests(where)
  changed = sorted(name for name in set(expected) | set(found) if expected.get(name) != found.get(name))
  if changed:
    raise CheckpointError(f"The checkpoint {where} is damaged: {len(changed)} of its files differ from the "
                          f"checksums written when it was saved (e.g. {changed[0]}).")


@contextlib.contextmanager
def _save_errors(manager: ocp.CheckpointManager, step):
  try:
    yield
  except Exception as e:  # orbax and tensorstore raise many types; a full disk is the one users cause
    text = str(e)
    if "No space left" not in text and "RESOURCE_EXHAUSTED" not in text and getattr(e, "errno", 0) != errno.ENOSPC:
      raise
    intact = [s for s in manager.all_steps() if s != step]
    raise CheckpointError(
        f"Saving a checkpoint in {manager.directory} failed: no space left on the device. Free space and run "
        f"the same command to resume from checkpoint {max(intact) if intact else '(none)'}, which is intact; "
        "or lower config.train.keep_checkpoints.") from e


_FILTERING = False  # whether _ignore_orphaned_reads has installed its filters


def _ignore_orphaned_reads() -> None:
  """After a failed restore or save, orbax has closed its event loop while tensorstore reads or writes of
  other arrays are still in flight; each one finishing then reports 'Event loop is closed' from a worker
  thread. Those reports carry no information beyond the error we raise, so they are dropped (the filters
  are installed once, with the first manager)."""
  global _FILTERING
  if _FILTERING:
    return
  _FILTERING = True
  orphaned = lambda exc: isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)
  previous_unraisable, previous_thread = sys.unraisablehook, threading.excepthook

  def unraisable_hook(unraisable):
    if not orphaned(unraisable.exc_value):
      previous_unraisable(unraisable)

  def thread_hook(args):
    if not orphaned(args.exc_value):
      previous_thread(args)

  class Filter(logging.Filter):  # asyncio logs "Task exception was never retrieved" for them too

    def filter(self, record):
      exc = record.exc_info[1] if record.exc_info else None
      return not (orphaned(exc) or "Event loop is closed" in record.getMessage())

  sys.unraisablehook, threading.excepthook = unraisable_hook, thread_hook
  logging.getLogger("asyncio").addFilter(Filter())


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores (state, record) at `step` (default latest) onto the shardings in `abstract_state`.

  The abstract state carries the target shardings, so a checkpoint written on another device count or
  mesh restores onto this one. Raises CheckpointError if the checkpoint is unreadable or damaged.
  """
  step = manager.latest_step() if step is None else step
  where = os.path.join(str(manager.directory), str(step))
  _verify_checksums(manager, step, where)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types; all mean the same thing to the user.
    raise CheckpointError(
        f"Cannot restore the checkpoint {where}: {type(e).__name__}: {e}\nIt was written by a different "
        "model/optimizer config or is damaged. Resume with the config it was written with, or move that "
        "step directory away to resume from an earlier checkpoint.") from e
  state, record = restored.state, restored.record
  found = float(jax.device_get(fingerprint(state)))
  if not np.isclose(found, record["fingerprint"], rtol=1e-5):
    raise CheckpointError(
        f"The checkpoint {where} is damaged: its contents do not match the fingerprint saved with it "
        f"({found} != {record['fingerprint']}). Move that step directory away to resume from an earlier "
        "checkpoint.")
  return state, record


def restore_latest_intact(workdir: str, keep: int, abstract_state, log):
  """(state of the newest intact checkpoint or None if there is no checkpoint, its manager).

  A damaged or unreadable checkpoint is reported by log.print, moved whole to workdir/damaged_checkpoints
  (kept, never deleted) and the previous one is tried; CheckpointError if none is intact."""
  manager = make_manager(workdir, keep)
  quarantine = os.path.join(os.path.abspath(workdir), "damaged_checkpoints")
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, _ = restore(manager, abstract_state, step)
      return state, manager
    except CheckpointError as e:
      log.print(f"warning: {' '.join(str(e).split())} It is moved to {quarantine}; trying the previous one.")
      manager.close()
      if jax.process_index() == 0:
        os.makedirs(quarantine, exist_ok=True)
        os.replace(os.path.join(str(manager.directory), str(step)), os.path.join(quarantine, str(step)))
        if os.path.exists(_checksum_path(manager, step)):
          os.replace(_checksum_path(manager, step), os.path.join(quarantine, f"{step}.checksums.json"))
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"quarantined checkpoint {step}")
      manager = make_manager(workdir, keep)  # a fresh list of steps
  if os.path.isdir(quarantine) and os.listdir(quarantine):
    manager.close()
    raise CheckpointError(f"No intact checkpoint is left in {manager.directory} (the damaged ones are kept in "
                          f"{quarantine}); use a new --workdir to start over.")
  return None, manager


def restore_params(run_dir: str, abstract_state, step: int | None = None, keep: int = 1):
  """(params, step) of a run's checkpoint `step` (None: its latest), for starting another run from it
  (fine-tuning); `abstract_state` is the train state that run saved (its Trainer's abstract_state)."""
  manager = make_manager(run_dir, keep)
  try:
    steps = manager.all_steps()
    if not steps or (step is not None and step not in steps):
      raise CheckpointError(
          f"{run_dir} has no checkpoint{'' if step is None else f' at step {step}'} (saved steps: "
          f"{sorted(steps) or 'none'}). Pretrain first, or name a saved step.")
    state, record = restore(manager, abstract_state, step)
  finally:
    manager.close()
  return state.params, record["step"]
