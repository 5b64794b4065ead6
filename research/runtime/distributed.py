"""Joining a multi-process JAX job (several hosts, or several processes on one host).

Every process runs the same `launch.py` command; `jax.distributed.initialize` makes the devices of
all processes one global device list, so the mesh in parallel.py spans hosts. It must run before
anything touches a JAX backend.

When to join (`--distributed`):
  auto (default): when --coordinator_address/--num_processes/--process_id are given, or a
    multi-process cluster is detected: SLURM with more than one task, a Cloud TPU VM (TPU device
    files) or GKE TPU pods (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES). On a detected cluster
    `jax.distributed.initialize()` takes everything from the environment.
  on: always join (explicit flags if given, else the environment).
  off: never; a single-process run.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import socket
import sys
import threading
import time

import jax

from research.errors import ConfigError

MODES = ('auto', 'on', 'off')
ABORT_MARGIN_S = 30  # jax's own deadline, after ours: our message comes first.
EXIT_TIMEOUT = 3


@dataclasses.dataclass(frozen=True)
class Request:
  mode: str = 'auto'
  coordinator_address: str | None = None  # host:port of process 0.
  num_processes: int | None = None
  process_id: int | None = None
  timeout_s: int = 300  # How long to wait for the coordinator and every process to join.


def detect_cluster(env: dict | None = None) -> str | None:
  """The multi-process environment this process runs in, if any: slurm, gke_tpu, cloud_tpu."""
  env = os.environ if env is None else env
  slurm_keys = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
                'SLURM_LOCALID')
  if all(k in env for k in slurm_keys) and int(env['SLURM_NTASKS']) > 1:
    return 'slurm'
  if env.get('TPU_WORKER_HOSTNAMES') or env.get('TPU_PROCESS_ADDRESSES'):
    return 'gke_tpu'
  tpu_files = glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*')
  if tpu_files and importlib.util.find_spec('libtpu') is not None:
    return 'cloud_tpu'  # A TPU VM; jax reads worker count and id from the metadata server.
  return None


def _check(req: Request) -> tuple[str, int] | None:
  """Validates the request; returns the coordinator (host, port) for explicit flags."""
  if req.mode not in MODES:
    raise ConfigError(f'--distributed={req.mode!r} is not one of {list(MODES)}.')
  if not isinstance(req.timeout_s, int) or req.timeout_s <= 0:
    raise ConfigError(f'--initialization_timeout must be a positive number of seconds, '
                      f'got {req.timeout_s!r}.')
  given = {'--coordinator_address': req.coordinator_address,
           '--num_processes': req.num_processes, '--process_id': req.process_id}
  if all(v is None for v in given.values()):
    return None
  if req.mode == 'off':
    raise ConfigError(f'--distributed=off conflicts with {[k for k, v in given.items() if v]}.')
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise ConfigError(f'A multi-process run needs all of --coordinator_address, --num_processes '
                      f'and --process_id; missing {missing}.')
  host, _, port = req.coordinator_address.rpartition(':')
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f'--coordinator_address={req.coordinator_address!r} must be HOST:PORT '
                      '(e.g. 127.0.0.1:12345, or the first host of the job and a free port).')
  if req.num_processes < 1 or not 0 <= req.process_id < req.num_processes:
    raise ConfigError(f'--process_id={req.process_id} must be in [0, --num_processes='
                      f'{req.num_processes}).')
  return host, int(port)


def wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
  """Blocks until the coordinator accepts TCP connections, or raises after `timeout_s`.

  jax's own wait ends in a C++ abort with a stack trace; checking first turns the common failure
  (process 0 not started, wrong address, a firewall) into a one-line error.
  """
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConfigError(
            f'The coordinator {host}:{port} did not answer within {timeout_s:g}s ({e}). Is '
            'process 0 running with the same --coordinator_address, and is the port reachable '
            'from this host? (--initialization_timeout sets the wait.)') from None
      time.sleep(0.2)


def _give_up(who: str, timeout_s: int) -> None:
  print(f'error: the multi-process job did not come together within {timeout_s}s (this process: '
        f'{who}). Every process must be started with the same --coordinator_address and '
        '--num_processes and a distinct --process_id; a missing or crashed process blocks the '
        'others. --initialization_timeout sets the wait.', file=sys.stderr, flush=True)
  os._exit(EXIT_TIMEOUT)  # The main thread is blocked inside jax; only a hard exit ends it.


def initialize(req: Request) -> bool:
  """Joins the job if asked or detected; returns whether this is a multi-process run."""
  coordinator = _check(req)
  cluster = detect_cluster()
  if req.mode == 'off' or (req.mode == 'auto' and coordinator is None and cluster is None):
    return False
  # Cross-process collectives on CPU need an implementation (gloo is jax's default today; set it
  # explicitly so a CPU-only multi-process run works whatever the default becomes).
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  start = time.monotonic()
  if coordinator is not None:
    who = f'process {req.process_id} of {req.num_processes}, coordinator {req.coordinator_address}'
  else:
    who = f'a job found in the environment ({cluster or "jax auto-detection"})'
  print(f'distributed: joining as {who} (timeout {req.timeout_s}s)', file=sys.stderr, flush=True)
  if coordinator is not None and req.process_id != 0:
    wait_for_coordinator(*coordinator, req.timeout_s)
  # jax gives up with a C++ abort and a stack trace; this watchdog fires first with a message.
  watchdog = threading.Timer(max(1.0, req.timeout_s - (time.monotonic() - start)), _give_up,
                             args=(who, req.timeout_s))
  watchdog.daemon = True
  watchdog.start()
  try:
    if coordinator is not None:
      jax.distributed.initialize(req.coordinator_address, req.num_processes, req.process_id,
                                 initialization_timeout=req.timeout_s + ABORT_MARGIN_S)
    else:
      try:
        jax.distributed.initialize(initialization_timeout=req.timeout_s + ABORT_MARGIN_S)
      except ValueError as e:  # jax found no cluster to take the coordinator etc. from.
        raise ConfigError(f'--distributed={req.mode}: no multi-process environment found ({e}). '
                          'Pass --coordinator_address, --num_processes and --process_id, '
                          'or --distributed=off.') from e
  finally:
    watchdog.cancel()
  print(f'distributed: joined as process {jax.process_index()} of {jax.process_count()} in '
        f'{time.monotonic() - start:.1f}s', file=sys.stderr, flush=True)
  return True
