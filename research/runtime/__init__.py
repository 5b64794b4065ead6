"""Runtime guards: what keeps a run safe without touching its math.

The train loop sees one object, `Guards`, and calls it at four points (a batch is made, a step
was dispatched, a log point, a save). Behind it:
  signals.py       SIGTERM/SIGINT -> finish the step, save, exit 0; every process stops together.
  watchdog.py      no progress for config.step_timeout_s -> stacks of every thread, exit 5.
  heartbeat.py     multi-process: a survivor names the dead process; exits that never wait on it.
  faults.py        faults injected by the tests (RESEARCH_FAULT_INJECTION), never by a config.
  resume_check.py  a workdir continues only the run that wrote it (config diff on resume).
  distributed.py   joining a multi-process job before any JAX computation.
Each fault, what the run does about it, the test that shows it and the exit codes:
docs/reliability.md.
"""

from __future__ import annotations

import jax
import ml_collections

from research.errors import ConfigError
from research.runtime import heartbeat
from research.runtime.faults import Fault
from research.runtime.signals import StopSignals
from research.runtime.watchdog import Watchdog


def check_config(config: ml_collections.ConfigDict) -> Fault:
  """The runtime keys, checked before compute; returns the fault to inject (usually none)."""
  timeout = config.step_timeout_s
  if not isinstance(timeout, (int, float)) or timeout < 0:
    raise ConfigError(f'config.step_timeout_s must be >= 0 seconds (0 = no watchdog), '
                      f'got {timeout!r}.')
  return Fault.from_env()


class Guards:
  """Signals, watchdog, heartbeat and test faults behind the few calls the loop makes.

  Use as a context manager around the loop: handlers and threads are installed on entry and
  removed on exit, whatever happens inside.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.fault = check_config(config)
    self._timeout_s = config.step_timeout_s
    self._signals: StopSignals | None = None
    self._watchdog: Watchdog | None = None

  def __enter__(self) -> Guards:
    self._signals = StopSignals()
    heartbeat.start_heartbeat()
    self._watchdog = Watchdog(self._timeout_s, heartbeat.describe_processes)
    return self

  def __exit__(self, *exc) -> None:
    self._signals.close()
    self._watchdog.close()

  @property
  def stop_reason(self) -> str | None:
    return self._signals.received

  def batch(self, index: int, batch: dict) -> dict:
    """Every training batch passes here (the `nan` fault poisons one)."""
    return self.fault.poison(index, batch)

  def stepped(self, step: int) -> None:
    """After update `step` was dispatched."""
    self._watchdog.pet(step)
    self.fault.after_step(step)

  def progressed(self, step: int) -> None:
    """After an evaluation or a save: the watchdog counts from here."""
    self._watchdog.pet(step)

  def should_stop(self, at_log_point: bool) -> bool:
    return self._signals.should_stop(at_log_point, jax.process_count())

  def saving(self, step: int) -> None:
    self.fault.before_save(step)
