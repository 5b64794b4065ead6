"""SLURM from the sweep: resources, checks before anything is submitted, jobs, their states.

Only the command-line tools (`sbatch`, `squeue`, `scontrol`, `scancel`, `sinfo`) are used, so any
SLURM the shell reaches works and nothing here imports a SLURM library. What SLURM refuses becomes
one ConfigError that quotes SLURM's own words (launch.py turns it into `error: ...`, exit 2).
sweep_run.py decides what to run; this module only talks to SLURM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence

from research.errors import ConfigError

COMMAND_TIMEOUT_S = 60
EXIT_FILE = 'slurm_exit_code'  # Written by the job script: the exit status of `srun launch.py`.
ACTIVE = ('PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'SUSPENDED', 'REQUEUED', 'RESIZING')
KEYS = ('partition', 'time', 'ntasks', 'cpus_per_task', 'gpus_per_task', 'options')


@dataclasses.dataclass(frozen=True)
class Resources:
  """What one sweep point asks of SLURM; None = the cluster's default."""
  partition: str | None = None
  time: str | None = None  # A SLURM time limit: MINUTES, HH:MM:SS, D-HH:MM...
  ntasks: int = 1  # Processes per point (each joins jax.distributed from SLURM's environment).
  cpus_per_task: int | None = None
  gpus_per_task: int | None = None
  options: tuple[str, ...] = ()  # Extra sbatch options, e.g. ('--qos=short', '--mem=8G').

  def sbatch_options(self) -> list[str]:
    given = {'--partition': self.partition, '--time': self.time, '--ntasks': self.ntasks,
             '--cpus-per-task': self.cpus_per_task, '--gpus-per-task': self.gpus_per_task}
    return [f'{k}={v}' for k, v in given.items() if v not in (None, '')] + list(self.options)


def resources(sweep_slurm: dict | None, flags: dict) -> Resources:
  """The experiment's `Sweep(slurm={...})` with the non-empty command-line flags on top."""
  merged = dict(sweep_slurm or {})
  unknown = sorted(set(merged) - set(KEYS))
  if unknown:
    raise ConfigError(f'Sweep(slurm=...) has unknown keys {unknown}; known: {list(KEYS)}.')
  merged.update({k: v for k, v in flags.items() if v not in (None, '', ())})
  options = merged.get('options') or ()
  merged['options'] = tuple(shlex.split(options) if isinstance(options, str) else options)
  for key in ('ntasks', 'cpus_per_task', 'gpus_per_task'):
    value = merged.get(key)
    if value is not None and (not isinstance(value, int) or value < (1 if key == 'ntasks' else 0)):
      raise ConfigError(f'SLURM {key} must be a positive integer, got {value!r}.')
  return Resources(**merged)


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
  """A SLURM command; a missing tool or a controller that does not answer is a ConfigError."""
  if shutil.which(cmd[0]) is None:
    raise ConfigError(f'--executor=slurm: `{cmd[0]}` is not on PATH: no SLURM is reachable from '
                      'this machine (scripts/slurm_cluster.sh start runs a one-node cluster).')
  try:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    raise ConfigError(f'--executor=slurm: `{shlex.join(cmd)}` did not answer within '
                      f'{COMMAND_TIMEOUT_S}s; is slurmctld up?') from None


def slurm_words(result: subprocess.CompletedProcess) -> str:
  """SLURM's own message: its error lines (stderr), joined."""
  lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
  return ' '.join(lines[-3:]) or f'exit code {result.returncode}'


def check(res: Resources) -> None:
  """Before anything is written: SLURM answers and accepts these resources for a job.

  `sbatch --test-only` validates partition, time limit and resource request exactly as a real
  submission would, without submitting anything.
  """
  result = _run(['sbatch', '--test-only', *res.sbatch_options()], stdin='#!/bin/bash\ntrue\n')
  if result.returncode != 0:
    raise ConfigError(f'SLURM refused the sweep\'s job request '
                      f'({shlex.join(res.sbatch_options()) or "no options"}): '
                      f'{slurm_words(result)}')


def job_script(command: list[str], point_dir: str, log_path: str, job_name: str,
               res: Resources, cwd: str) -> str:
  """The batch script of one point: `srun` runs the command on every task; the exit code of
  srun lands in POINT_DIR/slurm_exit_code (a job's record leaves SLURM's memory soon after)."""
  options = [f'--job-name={job_name}', f'--output={log_path}', '--open-mode=append',
             f'--chdir={cwd}', *res.sbatch_options()]
  exit_file = shlex.quote(f'{point_dir}/{EXIT_FILE}')
  return '\n'.join(['#!/bin/bash', *(f'#SBATCH {shlex.quote(o)}' for o in options),
                    f'rm -f {exit_file}', f'srun {shlex.join(command)}', 'rc=$?',
                    f'echo $rc > {exit_file}', 'exit $rc', ''])


def exit_code(point_dir: str) -> int | None:
  """What the job script recorded: srun's exit status; None if it never got there."""
  try:
    with open(os.path.join(point_dir, EXIT_FILE)) as f:
      return int(f.read().strip())
  except (OSError, ValueError):
    return None


def clear_exit_code(point_dir: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(point_dir, EXIT_FILE))


def submit(script_path: str) -> str:
  """sbatch SCRIPT; returns the job id."""
  result = _run(['sbatch', '--parsable', script_path])
  if result.returncode != 0:
    raise ConfigError(f'sbatch refused {script_path}: {slurm_words(result)}')
  return result.stdout.strip().split(';')[0]


def states(job_ids: Sequence[str]) -> dict[str, str]:
  """The state of each job SLURM still knows (PENDING, RUNNING, COMPLETED, TIMEOUT, ...)."""
  if not job_ids:
    return {}
  result = _run(['squeue', '-h', '--states=all', '-o', '%i %T', '-j', ','.join(job_ids)])
  if result.returncode != 0 and 'Invalid job id' not in (result.stderr or ''):
    raise ConfigError(f'squeue failed: {slurm_words(result)}')
  found = dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) >= 2)
  return {j: found[j] for j in job_ids if j in found}


def active(job_ids: Sequence[str]) -> list[str]:
  """The jobs among `job_ids` that are still queued or running."""
  known = states([j for j in job_ids if j])
  return [j for j, s in known.items() if s in ACTIVE]


def refuse_while_active(job_ids: Sequence[str]) -> None:
  """ConfigError while any of an earlier submission's jobs is queued or running: submitting the
  sweep again would train the same points twice at once."""
  live = active(job_ids)
  if live:
    raise ConfigError(f'SLURM jobs {live} of an earlier submission of this sweep are still queued '
                      f'or running (squeue -j {",".join(live)}); wait for them or scancel them, '
                      'then run this again (finished points are kept).')


def cancel(running: Sequence[str], queued: Sequence[str]) -> None:
  """Running jobs get SIGTERM on their steps only (once: a second SIGTERM would stop a run before
  its checkpoint), so each saves and exits; queued jobs are removed."""
  if running:
    _run(['scancel', '--signal=TERM', *running])
  if queued:
    _run(['scancel', *queued])


def follow_jobs(entries: list[dict], submit: Callable[[dict], None],
                ended: Callable[[dict, str | None], None], save: Callable[[], None],
                poll_seconds: float = 1.0) -> None:
  """Submits each entry (`submit` sets entry['job_id']), then polls squeue: an entry's status
  follows its job (pending, running) until the job ends, when `ended(entry, final state)` records
  it. Ctrl-C or SIGTERM: running jobs checkpoint and stop, queued ones are removed, every entry
  not finished is marked interrupted, and the exception goes on."""
  waiting = list(entries)
  try:
    for entry in waiting:
      submit(entry)
      save()
    while waiting:
      time.sleep(max(poll_seconds, 1.0))
      known = states([e['job_id'] for e in waiting])
      changed = False
      for entry in list(waiting):
        state = known.get(entry['job_id'])
        if state not in ACTIVE:
          waiting.remove(entry)
          ended(entry, state)
          continue
        status = 'pending' if state == 'PENDING' else 'running'
        if status == 'running' and 'started' not in entry:
          entry['started'] = time.time()
        changed |= entry['status'] != status
        entry['status'] = status
      if changed:
        save()
  except BaseException:
    submitted = [e for e in waiting if e.get('job_id')]
    with contextlib.suppress(ConfigError):
      cancel([e['job_id'] for e in submitted if e['status'] == 'running'],
             [e['job_id'] for e in submitted if e['status'] == 'pending'])
    for entry in waiting:
      entry['status'] = 'interrupted'
    save()
    raise
