"""Hangs never idle: no progress for `config.step_timeout_s` -> every thread's stack, exit 5."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

from absl import logging

from research.errors import EXIT_HANG


class Watchdog:
  """Exits with EXIT_HANG when `pet` is not called for `timeout_s` seconds (0 = off).

  The loop pets it after every step, eval and save, so the timeout bounds the slowest of those
  (the first step includes XLA compilation: set it generously). A hung collective, a dead peer
  process or a stuck input pipeline all end as a stack dump of every thread and a non-zero exit
  instead of a job that idles until its allocation ends.
  """

  def __init__(self, timeout_s: float, describe=lambda: ''):
    self.timeout_s = float(timeout_s or 0)
    self._describe = describe  # Extra words for the report (e.g. which processes are alive).
    self._last = time.monotonic()
    self._step = None
    self._stop = threading.Event()
    self._thread = None
    if self.timeout_s > 0:
      self._thread = threading.Thread(target=self._watch, name='step_watchdog', daemon=True)
      self._thread.start()

  def pet(self, step: int) -> None:
    self._last, self._step = time.monotonic(), step

  def _watch(self) -> None:
    poll = min(1.0, self.timeout_s / 4)
    while not self._stop.wait(poll):
      idle = time.monotonic() - self._last
      if idle > self.timeout_s:
        self._fire(idle)

  def _fire(self, idle: float) -> None:
    where = 'before the first step' if self._step is None else f'after step {self._step}'
    try:
      extra = self._describe()
    except Exception as e:  # noqa: BLE001 - the report must not stop the exit.
      extra = f'(could not check the other processes: {e})'
    message = ' '.join(filter(None, [
        f'watchdog: no progress for {idle:.0f}s {where} (config.step_timeout_s='
        f'{self.timeout_s:g}).', extra,
        f'Stacks of all threads follow; exiting with code {EXIT_HANG}.']))
    print(message, file=sys.stderr, flush=True)
    logging.error('%s', message)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(EXIT_HANG)  # Not sys.exit: the main thread is the one that is stuck.

  def close(self) -> None:
    self._stop.set()
