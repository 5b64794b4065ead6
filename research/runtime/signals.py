"""Preemption: SIGTERM / SIGINT stop the run at a step boundary, after a checkpoint."""

from __future__ import annotations

import signal
import threading

import numpy as np
from jax.experimental import multihost_utils


class StopSignals:
  """SIGTERM / SIGINT -> `received`; the train loop polls it between steps.

  The handler only records the signal (printing or saving inside a handler can deadlock), so the
  step in flight finishes and the loop saves a checkpoint itself. A second signal restores the
  default action and re-delivers it, so an impatient Ctrl-C still stops at once.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: str | None = None
    self._previous: dict = {}
    if threading.current_thread() is threading.main_thread():  # signal() works only there.
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    if self.received is not None:
      self.close()
      signal.raise_signal(signum)  # Default action now: SIGINT -> KeyboardInterrupt.
      return
    self.received = signal.Signals(signum).name

  def should_stop(self, at_log_point: bool, process_count: int = 1) -> bool:
    """Whether to stop after this step. Free on one process; with several, every process must stop
    at the same step, so they agree (one tiny all-gather) at log points only."""
    if process_count == 1:
      return self.received is not None
    if not at_log_point:
      return False


    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if self.received is None and np.any(flags):
      self.received = f'a stop signal on process {int(np.argmax(flags))}'
    return bool(np.any(flags))

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
