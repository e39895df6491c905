"""The errors a user's input causes. launch.py prints each as one `error: ...` line, never a traceback.

Raise them with a message that names the problem (the config key, file or checkpoint) and the fix.
"""


class UserError(Exception):
  """A problem with the user's input: config, command line, data, checkpoints or work directories."""


class ConfigError(UserError, ValueError):
  """A config that cannot run; the message names the key and the fix."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be restored; the message says which and what to do."""


class DataError(UserError, ValueError):
  """Data that cannot be used (missing files, empty splits, an unprepared dataset, a mismatched
  tokenizer...); the message names it and the fix."""


class RunStopped(Exception):
  """A run that stopped early on purpose; launch.py prints it as one `error:` line and exits with
  exit_code."""
  exit_code = 1


class Interrupted(RunStopped):
  """A signal (SIGTERM, SIGINT, SIGUSR1, SIGUSR2) stopped the run at a step boundary, its state saved."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum  # the shell's convention for death by a signal


class Diverged(RunStopped):
  """Training produced a non-finite loss or gradient norm; nothing after the last finite step was saved."""
