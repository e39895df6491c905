"""Stop requests by signal: SIGTERM (schedulers, preemption), SIGINT (Ctrl-C), SIGUSR1 and SIGUSR2 (Slurm's
time-limit and preemption warnings) only set a flag; the train loop saves a checkpoint at the next step
boundary (never inside a step, whose buffers are donated) and stops."""

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class StopRequests:
  """`with StopRequests() as stop:` ... `stop.signum` is the first signal received (None: none); the
  previous handlers are restored on exit. Handlers can only be installed from the main thread; elsewhere
  (e.g. a run inside a worker thread) signals keep their default behaviour."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is None:
      self.signum = signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ""
