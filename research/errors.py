"""The exception types and exit codes of a run (a leaf: imports nothing of the project).

launch.py turns them into one `error: ...` line and an exit code:
  ConfigError      2  bad input, found before any compute; nothing in the workdir changed.
  NonFiniteError   3  loss or gradients NaN/Inf; the last good checkpoint is left intact.
  CheckpointError  4  a checkpoint could not be written or read; nothing was deleted.
  EXIT_HANG        5  the step watchdog fired (research/runtime/watchdog.py).
A run stopped by SIGTERM/SIGINT saves a checkpoint and exits 0.
"""

from __future__ import annotations

EXIT_CONFIG = 2


class ConfigError(ValueError):
  """A config value is wrong; the message says which key and how to fix it."""


# Exit codes of launch.py. ConfigError exits 2; a preempted run exits 0 after its checkpoint.
EXIT_NONFINITE = 3
EXIT_CHECKPOINT = 4
EXIT_HANG = 5


class RunError(RuntimeError):
  """A run stopped for a reason the message explains; launch.py exits with `exit_code`."""

  exit_code = 1


class NonFiniteError(RunError):
  """Loss or gradients became NaN/Inf; the last good checkpoint is left intact."""

  exit_code = EXIT_NONFINITE


class CheckpointError(RunError):
  """A checkpoint could not be written or no checkpoint could be read; nothing was deleted."""

  exit_code = EXIT_CHECKPOINT
