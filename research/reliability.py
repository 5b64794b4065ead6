"""Keeping work safe: preemption signals, a step watchdog, exact-resume bookkeeping, fault hooks.

What the train loop gets from here (README, "Reliability", has the table of faults and tests):
  StopSignals  SIGTERM/SIGINT set a flag; the loop finishes the step, saves, and exits 0. A second
               signal acts at once. Every process stops at the same step (agreed at log points).
  Watchdog     no progress for `config.step_timeout_s` -> every thread's stack, the live and dead
               processes of a multi-process job, and exit code EXIT_HANG (a hang never idles).
  truncate_jsonl, pending_to_json/pending_from_json
               metrics.jsonl after a resume equals an uninterrupted run's, line for line.
  check_config the reliability keys; returns the Fault the tests inject (research/faults.py).
"""

from __future__ import annotations

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
from research.faults import Fault

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


HEARTBEAT_KEY = 'research_heartbeat/'
HEARTBEAT_S = 1.0


def _client():
  """The jax.distributed client of a multi-process job, else None (never starts a backend)."""
  from jax._src import distributed

  return distributed.global_state.client


def in_distributed_job() -> bool:
  return 'jax' in sys.modules and _client() is not None


def start_heartbeat() -> None:
  """Multi-process jobs: a daemon thread bumps this process's counter in the coordination
  service's key-value store every HEARTBEAT_S, so `describe_processes` can name a process that
  stopped. Counters, not clocks: hosts' clocks may disagree. Idempotent."""
  client = _client()
  if client is None or getattr(start_heartbeat, 'started', False):
    return
  import jax

  key = f'{HEARTBEAT_KEY}{jax.process_index()}'

  def beat():
    while True:
      try:
        client.key_value_increment(key, 1)
      except Exception:  # noqa: BLE001 - the coordinator is gone; describe_processes says so.
        return
      time.sleep(HEARTBEAT_S)

  threading.Thread(target=beat, name='heartbeat', daemon=True).start()
  start_heartbeat.started = True


def _call_with_timeout(fn, timeout_s: float):
  """fn() in a daemon thread: KV-store calls can block when the coordinator has died."""
  result: dict = {}

  def run():
    try:
      result['value'] = fn()
    except Exception as e:  # noqa: BLE001
      result['error'] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if 'value' not in result:
    raise TimeoutError(result.get('error', f'no answer in {timeout_s:g}s'))
  return result['value']


def describe_processes(timeout_s: float = 5.0) -> str:
  """Names the processes of a multi-process job whose heartbeat stopped ('' for one process).

  Reads every counter twice, 3 beats apart; takes about 3 s.
  """
  client = _client()
  if client is None:
    return ''
  import jax

  count, me = jax.process_count(), jax.process_index()

  def read() -> dict[int, str]:
    entries = client.key_value_dir_get(HEARTBEAT_KEY)
    return {int(k.rstrip('/').rsplit('/', 1)[-1]): v for k, v in entries}

  try:
    first = _call_with_timeout(read, timeout_s)
    time.sleep(3 * HEARTBEAT_S)
    second = _call_with_timeout(read, timeout_s)
  except Exception as e:  # noqa: BLE001
    return (f'This is process {me} of {count}. The coordinator (process 0) does not answer '
            f'({e}): it has probably died.')
  stopped = [i for i in range(count) if i != me and first.get(i) == second.get(i)]
  if stopped:
    return (f'This is process {me} of {count}. Process(es) {stopped} stopped sending heartbeats: '
            'they died, were killed, or are stuck; see their logs.')
  return f'This is process {me} of {count}; every process is alive (one may be stuck).'


def exit_process(code: int) -> None:
  """sys.exit, except in a multi-process job: there os._exit, skipping jax.distributed's shutdown
  barrier, which waits for every process (for a dead one, until the heartbeat timeout)."""
  if not in_distributed_job():
    sys.exit(code)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def exit_with_error(e: BaseException, code: int) -> None:
  """The `error: ...` line (naming dead processes in a multi-process job), then exit_process."""
  text = str(e) if isinstance(e, RunError) else f'{type(e).__name__}: {e}'
  if in_distributed_job():
    text = f'{text.strip()} [{describe_processes()}]'
  logging.error('%s', text)
  print(f'error: {text}', file=sys.stderr, flush=True)
  exit_process(code)


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
