"""Keeping work safe: preemption signals, a step watchdog, exact-resume bookkeeping, fault hooks.

What the train loop gets from here (README, "Reliability", has the table of faults and tests):
  StopSignals  SIGTERM/SIGINT set a flag; the loop finishes the step, saves, and exits 0. A second
               signal acts at once. Every process stops at the same step (agreed at log points).
  Watchdog     no progress for `config.step_timeout_s` -> every thread's stack, the live and dead
               processes of a multi-process job, and exit code EXIT_HANG (a hang never idles).
  truncate_jsonl, pending_to_json/pending_from_json
               metrics.jsonl after a resume equals an uninterrupted run's, line for line.
  Fault        `config.fault_injection = 'KIND@STEP'`: the faults the tests inject (off by default).
"""

from __future__ import annotations

import dataclasses
import errno
import faulthandler
import json
import os
import signal
import sys
import threading
import time

import numpy as np
from absl import logging

from research.config_checks import ConfigError

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


# --- Preemption ------------------------------------------------------------------------------


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
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if self.received is None and np.any(flags):
      self.received = f'a stop signal on process {int(np.argmax(flags))}'
    return bool(np.any(flags))

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def check_config(config) -> Fault:
  """The reliability keys, checked before compute; returns the fault to inject (usually none)."""
  timeout = config.step_timeout_s
  if not isinstance(timeout, (int, float)) or timeout < 0:
    raise ConfigError(f'config.step_timeout_s must be >= 0 seconds (0 = no watchdog), '
                      f'got {timeout!r}.')
  return Fault.parse(config.fault_injection)


def host_metrics(pending: list[dict]) -> list[dict]:
  """Per-step metrics on the host (waits for them); replicated arrays of any process count."""
  import jax

  return [{k: np.asarray(v.addressable_data(0) if isinstance(v, jax.Array) else v)
           for k, v in m.items()} for m in pending]


def nonfinite_report(pending: list[dict], step: int, last_good: int | None,
                     directory: str) -> str:
  """The diagnostic of a NaN/Inf stop: the first bad step, which metrics, and the norms."""
  host = host_metrics(pending)
  first = next(i for i, m in enumerate(host) if np.max(m['nonfinite']))
  bad_step = step - len(host) + 1 + first
  values = {k: float(np.mean(host[first][k])) for k in ('loss', 'grad_norm', 'param_norm')}
  which = [k for k, v in values.items() if not np.isfinite(v)] or ['loss/grad']
  good = (f'the last good checkpoint is step {last_good} in {directory} (intact)'
          if last_good is not None else f'no checkpoint was saved yet in {directory}')
  return (f'Non-finite {", ".join(which)} at step {bad_step} (loss={values["loss"]}, '
          f'grad_norm={values["grad_norm"]}, param_norm={values["param_norm"]}). Stopped at the '
          f'log point of step {step} without saving this state; {good}. Try a lower learning '
          'rate, config.optimizer.grad_clip_norm, or config.nan_policy="skip".')


# --- Hangs -----------------------------------------------------------------------------------


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


def describe_processes(timeout_s: float = 5.0) -> str:
  """Which processes of a multi-process job the coordination service still sees alive."""
  import jax
  from jax._src import distributed

  count = jax.process_count()
  client = distributed.global_state.client
  if count == 1 or client is None:
    return ''
  result: dict = {}

  def ask():  # The call can block if the coordinator (process 0) itself is gone.
    try:
      result['live'] = sorted(client.get_live_nodes(list(range(count))))
    except Exception as e:  # noqa: BLE001
      result['error'] = e

  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(timeout_s)
  me = f'This is process {jax.process_index()} of {count}.'
  if 'live' in result:
    dead = sorted(set(range(count)) - set(result['live']))
    if dead:
      return f'{me} Process(es) {dead} left the job (died or were killed); live: {result["live"]}.'
    return f'{me} All processes are alive: one of them is stuck, or a collective is.'
  why = result.get('error', f'no answer in {timeout_s:g}s')
  return f'{me} The coordinator (process 0) is unreachable ({why}): it has probably died.'


# --- Exact resume ----------------------------------------------------------------------------


def truncate_jsonl(path: str, max_step: int) -> int:
  """Drops lines with step > max_step (and a torn last line); returns how many were dropped.

  After a kill, metrics.jsonl can hold lines past the checkpoint that is restored; the resumed run
  writes those steps again, so dropping them makes the file equal an uninterrupted run's.
  """
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line)['step'] <= max_step:
        keep.append(line)
    except (ValueError, KeyError, TypeError):
      pass  # Torn by a kill mid-write.
  if len(keep) != len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return len(lines) - len(keep)


def pending_to_json(pending: list[dict]) -> dict:
  """Per-step train metrics since the last log point, as JSON for the checkpoint.

  A preemption checkpoint falls between log points; the resumed run must average the same steps
  at the next log point, so the values travel with the checkpoint, dtype included (floats
  round-trip exactly through JSON).
  """
  host = host_metrics(pending)
  if not host:
    return {}
  return {k: {'dtype': str(m.dtype), 'values': [float(np.mean(h[k])) for h in host]}
          for k, m in host[0].items()}


def pending_from_json(saved: dict | None) -> list[dict]:
  if not saved:
    return []
  n = len(next(iter(saved.values()))['values'])
  return [{k: np.asarray(v['values'][i], dtype=v['dtype']) for k, v in saved.items()}
          for i in range(n)]


# --- Fault injection (tests) -----------------------------------------------------------------

FAULTS = {
    'nan': 'the inputs of update STEP are NaN (the loss and gradients follow)',
    'sigterm': 'SIGTERM to this process right after update STEP',
    'sigint': 'SIGINT to this process right after update STEP',
    'sigkill': 'SIGKILL to this process right after update STEP',
    'hang': 'the loop sleeps forever after update STEP (for the watchdog)',
    'sigkill_in_save': 'SIGKILL while the checkpoint of step STEP is being written',
    'enospc_in_save': 'writing the checkpoint of step STEP fails with ENOSPC (disk full)',
}


@dataclasses.dataclass(frozen=True)
class Fault:
  """`config.fault_injection = 'KIND@STEP'` ('' = none), e.g. 'nan@7'. STEP counts updates from 1.

  Test-only hooks, kept here so the train loop has one call per hook and no test logic.
  """

  kind: str = ''
  step: int = -1

  @classmethod
  def parse(cls, spec: str) -> Fault:
    if not spec:
      return cls()
    kind, _, step = spec.partition('@')
    if kind not in FAULTS or not step.isdigit() or int(step) < 1:
      raise ConfigError(f'config.fault_injection={spec!r} must be KIND@STEP with STEP >= 1 and '
                        f'KIND one of {sorted(FAULTS)}, or "" for none.')
    return cls(kind, int(step))

  def poison(self, index: int, batch: dict) -> dict:
    """train_batch(index) feeds update index + 1."""
    if self.kind != 'nan' or index + 1 != self.step:
      return batch
    inputs = batch['inputs']
    if not np.issubdtype(inputs.dtype, np.floating):
      raise ConfigError('fault_injection nan@STEP needs float model inputs (e.g. MNIST).')
    return dict(batch, inputs=np.full_like(inputs, np.nan))

  def after_step(self, step: int) -> None:
    if step != self.step:
      return
    if self.kind in ('sigterm', 'sigint', 'sigkill'):
      os.kill(os.getpid(), getattr(signal, self.kind.upper()))
    elif self.kind == 'hang':
      while True:
        time.sleep(3600)

  def before_save(self, step: int) -> None:
    """Arms a failure inside Orbax's (background) write of this step's data item."""
    if step != self.step or self.kind not in ('sigkill_in_save', 'enospc_in_save'):
      return
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    kind, original = self.kind, handler.JsonCheckpointHandler._save_fn

    async def failing_save(self_, x, directory):
      handler.JsonCheckpointHandler._save_fn = original  # One failure only.
      if kind == 'sigkill_in_save':
        os.kill(os.getpid(), signal.SIGKILL)
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    handler.JsonCheckpointHandler._save_fn = failing_save
