"""Multi-process liveness: heartbeats in the coordination service, so a survivor can name a
dead process, and exits that never wait on one."""

from __future__ import annotations

import os
import sys
import threading
import time

from absl import logging

from research.errors import RunError

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
