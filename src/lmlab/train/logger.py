"""Metrics out of the loop: a console progress line, a JSONL file and TensorBoard events.

Only process 0 writes; the others stay quiet. The event files are written with TensorBoard's own record
format and protos, not tf.summary: a training run never imports TensorFlow.
"""

import json
import os
import socket
import time

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from lmlab import config as config_lib


class EventFile:
  """One TensorBoard event file in `logdir`: scalars and ready-made summaries (e.g. HParams)."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.lmlab"
    self._records = RecordWriter(open(os.path.join(logdir, name), "wb"))
    self._add(event_pb2.Event(file_version="brain.Event:2"))

  def _add(self, event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, values: dict) -> None:
    self.summary(step, summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()]))

  def summary(self, step: int, summary) -> None:
    self._add(event_pb2.Event(step=step, summary=summary))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()


class MetricsLogger:

  def __init__(self, workdir: str, num_steps: int, tokens_per_step: int):
    self.enabled = jax.process_index() == 0
    self.num_steps, self.tokens_per_step = num_steps, tokens_per_step
    # Model FLOPs of one update and the peak FLOP/s of all devices (train/hardware.py), set once the model
    # is built: with both, progress lines report model FLOPs utilization (MFU).
    self.flops_per_step = self.peak_flops = None
    self._last_time = self._last_step = None
    self._workdir = os.path.abspath(workdir)
    if self.enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = EventFile(os.path.join(workdir, "tensorboard"))

  def start(self, step: int) -> None:
    self._last_time, self._last_step = time.perf_counter(), step

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    """Records `metrics` at `step` (JSONL, TensorBoard) without printing."""
    if not self.enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **metrics}) + "\n")
    self._jsonl.flush()
    self._tb.scalars(step, {f"{prefix}/{key}": value for key, value in metrics.items()})
    self._tb.flush()

  def train_progress(self, step: int, metrics: dict) -> None:
    """Logs train metrics with throughput, and prints step, loss, lr, tokens/s and ETA."""
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for `step` to finish
    now = time.perf_counter()
    seconds_per_step = (now - self._last_time) / max(step - self._last_step, 1)
    self._last_time, self._last_step = now, step
    metrics = dict(metrics, tokens_per_s=self.tokens_per_step / seconds_per_step)
    mfu = ""
    if self.flops_per_step and self.peak_flops:
      metrics["mfu"] = self.flops_per_step / seconds_per_step / self.peak_flops
      mfu = f"MFU {metrics['mfu']:.1%} | "
    self.write(step, metrics)
    eta = seconds_per_step * (self.num_steps - step)
    self.print(f"step {step:6d}/{self.num_steps} | loss {metrics['loss']:.4f} | "
               f"lr {metrics['lr']:.2e} | {metrics['tokens_per_s']:,.0f} tok/s | {mfu}"
               f"ETA {eta // 60:.0f}m{eta % 60:02.0f}s")

  def hparams(self, config: dict, final: dict) -> None:
    """The run's hyperparameters (every scalar config field) and final metrics for TensorBoard's HParams
    dashboard, so the runs of a sweep can be compared there too."""
    if not self.enabled:
      return
    from tensorboard.plugins.hparams import summary_v2
    values = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
              for k, v in config_lib.flatten(config).items() if k != "workdir" and v is not None}
    self._tb.summary(0, summary_v2.hparams_pb(values, trial_id=self._workdir))
    self._tb.scalars(0, {f"final/{key}": value for key, value in config_lib.flatten(final).items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)})
    self._tb.flush()

  def print(self, text: str) -> None:
    if self.enabled:
      print(text, flush=True)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()

