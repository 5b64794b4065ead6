"""Runs a sweep: one `launch.py` subprocess (or SLURM job) per point, each in DIR/<point name>.

A subprocess per point isolates failures (a crash or NaN in one point leaves the others running)
and reuses the trainer's resume: a finished point (summary.json at num_train_steps) is skipped, an
interrupted one is started again and resumes from its checkpoints. Nothing is ever deleted.
DIR/sweep.json records every point's status, so the report can list failures.

`--executor=slurm` submits each point as a batch job instead (research/tools/slurm.py) and waits
for them with the same bookkeeping; the job ids in sweep.json refuse a second submission while
the first one's jobs are queued or running.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import logging
from ml_collections import config_flags

from research import console, paths
from research.config_checks import check_workdir
from research.errors import ConfigError
from research.tools import slurm
from research.tools import sweep as sweep_lib

# Three levels up from research/tools/sweep_run.py: the folder of launch.py.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = 'sweep.json'
LOG_FILE = 'launch.log'
_ERROR_LINE = re.compile(r'^(\d+: )?(error: |[\w.]*(Error|Exception)\b)')
_SLURM_ERROR_LINE = re.compile(r'^(srun|sbatch|slurmstepd)[\w-]*: error: ')  # SLURM's own words.
PREFLIGHT = 'preflight: '  # launch.py's line before the first step: training had started.


# --- The state of one point's directory --------------------------------------------------------


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def nonfinite_metrics(summary: dict) -> list[str]:
  return [k for k, v in summary.items()
          if k not in ('step', 'wall_seconds') and isinstance(v, float) and not math.isfinite(v)]


def point_state(point_dir: str, num_train_steps: int) -> str:
  """'done', 'nonfinite' (finished, NaN metrics), 'resume' (has progress) or 'new'."""
  summary = read_json(os.path.join(point_dir, 'summary.json'))
  if summary is not None and summary.get('step') == num_train_steps:
    return 'nonfinite' if nonfinite_metrics(summary) else 'done'
  ckpt = os.path.join(point_dir, 'checkpoints')
  if os.path.isdir(ckpt) and any(name.isdigit() for name in os.listdir(ckpt)):
    return 'resume'
  return 'new'


def error_from_log(log_path: str, returncode: int) -> str:
  """The last error line of a failed point's log (the exception message), else SLURM's last error
  line, else its exit code."""
  try:
    with open(log_path, errors='replace') as f:
      lines = f.read()[-20000:].splitlines()
  except OSError:
    lines = []
  for pattern in (_ERROR_LINE, _SLURM_ERROR_LINE):  # The program's words, else SLURM's.
    for line in reversed(lines):
      if pattern.match(line.strip()):
        return line.strip()[:500]
  return f'exit code {returncode}'


# --- Commands and the manifest -----------------------------------------------------------------


def launch_command(config_arg: str, point_dir: str, overrides: dict[str, Any]) -> list[str]:
  """`python launch.py --config=... --workdir=DIR/<name> --config.k=v ...` for one point."""
  flags = [f'--config.{k}={sweep_lib.flag_value(v)}' for k, v in overrides.items()]
  return [sys.executable, os.path.join(REPO_ROOT, 'launch.py'), f'--config={config_arg}',
          f'--workdir={point_dir}', *flags]


def write_manifest(workdir: str, manifest: dict) -> None:
  manifest['updated'] = datetime.datetime.now().isoformat(timespec='seconds')
  tmp = os.path.join(workdir, f'.{MANIFEST}.tmp')
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=2, default=str)
  os.replace(tmp, os.path.join(workdir, MANIFEST))  # Readers never see half a file.


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else (
      f'{seconds // 60}m{seconds % 60:02d}s')


def progress_line(entries: Sequence[dict], walls: Sequence[float], parallel: int) -> str:
  count = {s: sum(e['status'] == s for e in entries) for s in ('done', 'failed', 'running')}
  left = len(entries) - count['done'] - count['failed']
  in_slurm = sum(e['status'] == 'pending' and bool(e.get('job_id')) for e in entries)
  queued = f', {in_slurm} pending in SLURM' if any(e.get('job_id') for e in entries) else ''
  eta = ''
  if walls and left:
    eta = f', ETA {_duration(sum(walls) / len(walls) * math.ceil(left / max(parallel, 1)))}'
  return (f'sweep: {count["done"]}/{len(entries)} done, {count["failed"]} failed, {left} left '
          f'({count["running"]} running{queued}){eta}')


# --- Running -----------------------------------------------------------------------------------

Starter = Callable[[list[str], Any], subprocess.Popen]


def _popen(cmd: list[str], log) -> subprocess.Popen:
  # The same working directory as the sweep: relative --config and --workdir paths stay valid.
  return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def lock_workdir(workdir: str):
  """One sweep per folder: a second one would train the same points twice at the same time.

  The lock is an flock on DIR/sweep.lock, so it goes away with the process however it ends.
  """
  f = open(os.path.join(workdir, 'sweep.lock'), 'a+')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or '?'
    f.close()
    raise ConfigError(f'Another sweep (pid {holder}) is running in {workdir}; wait for it or '
                      'stop it, then run this again (finished points are kept).') from None
  f.seek(0)
  f.truncate()
  f.write(f'{os.getpid()}\n')
  f.flush()
  return f


def plan(config: ml_collections.ConfigDict, workdir: str, sweep: sweep_lib.Sweep) -> list[dict]:
  """One manifest entry per point; finished points are marked done (or failed if NaN)."""
  names = sweep_lib.point_names(sweep.points)
  setting_names = sweep_lib.setting_names(sweep.points)
  # A skipped point keeps what the run that finished it recorded (time, exit code).
  before = {e['name']: e for e in (read_json(os.path.join(workdir, MANIFEST)) or {}).get(
      'points', [])}
  entries = []
  for name, setting, point in zip(names, setting_names, sweep.points, strict=True):
    steps = sweep_lib.apply(config, point).num_train_steps
    state = point_state(os.path.join(workdir, name), steps)
    status = {'done': 'done', 'nonfinite': 'failed'}.get(state, 'pending')
    entries.append({'name': name, 'setting': setting, 'overrides': point,
                    'num_train_steps': steps, 'status': status, 'skipped': status != 'pending',
                    'resumed': state == 'resume', 'returncode': None,
                    'error': 'non-finite final eval metrics' if state == 'nonfinite' else None,
                    'wall_seconds': None})
    if status != 'pending' and name in before:
      keep = ('returncode', 'wall_seconds') + (('error',) if status == 'failed' else ())
      entries[-1].update({k: before[name][k] for k in keep if before[name].get(k) is not None})
  return entries


def run_sweep(config_arg: str, config: ml_collections.ConfigDict, workdir: str,
              shared: dict[str, Any] | None = None, parallel: int = 1,
              sweep: sweep_lib.Sweep | None = None, start: Starter = _popen,
              poll_seconds: float = 0.5, executor: str = 'local',
              slurm_flags: dict | None = None) -> dict:
  """Runs every point of the sweep not yet finished; returns the manifest (also DIR/sweep.json).

  `config` is the resolved config of `config_arg` (with the `shared` command-line overrides);
  it is used to check every point before anything runs. `start` starts one point's command
  (local executor); `slurm_flags` are the --slurm_* flags (slurm executor).
  """
  if not paths.is_local(workdir):  # Its lock, logs and job scripts are local files (flock, Popen).
    raise ConfigError(f'--workdir={workdir!r}: a sweep\'s folder must be local (its points\' '
                      'workdirs are inside it).')
  if parallel < 1:
    raise ConfigError(f'--parallel must be >= 1, got {parallel}.')
  if executor not in ('local', 'slurm'):
    raise ConfigError(f'--executor must be local or slurm, got {executor!r}.')
  if executor == 'slurm' and parallel != 1:
    raise ConfigError(f'--parallel={parallel} applies to --executor=local: with SLURM every point '
                      'is submitted at once and the scheduler runs as many as its nodes allow.')
  sweep = sweep if sweep is not None else sweep_lib.load(config_arg)
  sweep_lib.validate(config, sweep.points)
  res = None
  if executor == 'slurm':  # SLURM answers and accepts the request, before anything is written.
    res = slurm.resources(sweep.slurm, slurm_flags or {})
    slurm.check(res)
  check_workdir(workdir)
  shared = dict(shared or {})
  wandb = config.get('wandb')
  if wandb is not None and wandb.get('project') and not wandb.get('group'):
    shared['wandb.group'] = os.path.basename(os.path.abspath(workdir))  # One W&B group per sweep.
  lock = lock_workdir(workdir)
  try:
    if res is not None:  # The first submitter may have died; its jobs live on.
      before = (read_json(os.path.join(workdir, MANIFEST)) or {}).get('points', [])
      slurm.refuse_while_active([e['job_id'] for e in before if e.get('job_id')])
    entries = plan(config, workdir, sweep)
    baseline = (sweep.baseline if sweep.baseline is not None
                else sweep_lib.setting_of(sweep.points[0]))
    baseline_name = next(e['setting'] for e in entries
                         if sweep_lib.setting_of(e['overrides']) == baseline)
    manifest = {'config': config_arg, 'shared_overrides': shared,
                'baseline': baseline_name, 'parallel': parallel, 'executor': executor,
                'points': entries}
    if res is not None:
      manifest['slurm'] = dataclasses.asdict(res)
    write_manifest(workdir, manifest)
    skipped = sum(e['skipped'] for e in entries)
    logging.info('Sweep of %d points in %s: %d already finished (skipped), %d to run, '
                 '%d at a time.', len(entries), workdir, skipped, len(entries) - skipped,
                 parallel)
    if res is None:
      _run_queue(workdir, manifest, start, poll_seconds)
    else:
      _run_slurm_jobs(workdir, manifest, res, poll_seconds)
  finally:
    lock.close()
  logging.info('%s', progress_line(manifest['points'], [], parallel))
  return manifest


def _finish(workdir: str, entry: dict, returncode: int, log_path: str, wall: float) -> None:
  """Records a point's outcome: done only with exit 0 and a complete, finite summary."""
  entry.update(returncode=returncode, wall_seconds=round(wall, 1))
  summary = read_json(os.path.join(workdir, entry['name'], 'summary.json')) or {}
  bad = nonfinite_metrics(summary)
  if returncode == 0 and summary.get('step') == entry['num_train_steps'] and not bad:
    entry.update(status='done', error=None)
  else:
    entry['status'] = 'failed'
    entry['error'] = (error_from_log(log_path, returncode) if returncode else
                      f'non-finite final eval metrics: {bad}' if bad else
                      'exited 0 without a complete summary.json')
  logging.info('%s %s (%.0fs)%s', entry['status'], entry['name'], wall,
               f': {entry["error"]}' if entry['error'] else '')


def _run_queue(workdir: str, manifest: dict, start: Starter, poll_seconds: float) -> None:
  """Runs the pending points, `parallel` at a time, until all have finished or failed."""
  entries, parallel = manifest['points'], manifest['parallel']
  shared = manifest['shared_overrides']
  queue = [e for e in entries if e['status'] == 'pending']
  running: dict[str, tuple[dict, subprocess.Popen, Any, float]] = {}
  walls: list[float] = []
  try:
    while queue or running:
      while queue and len(running) < parallel:
        entry = queue.pop(0)
        point_dir = os.path.join(workdir, entry['name'])
        os.makedirs(point_dir, exist_ok=True)
        log = open(os.path.join(point_dir, LOG_FILE), 'a')
        # Progress bars would fill the log; the point's own overrides come last and win.
        cmd = launch_command(manifest['config'], point_dir,
                             {'progress_bar': False, **shared, **entry['overrides']})
        log.write(f'\n$ {" ".join(cmd)}\n')
        log.flush()
        running[entry['name']] = (entry, start(cmd, log), log, time.time())
        entry['status'] = 'running'
        logging.info('start %s%s', entry['name'], ' (resuming)' if entry['resumed'] else '')
      write_manifest(workdir, manifest)
      time.sleep(poll_seconds)
      for name, (entry, proc, log, t0) in list(running.items()):
        if proc.poll() is None:
          continue
        log.close()
        del running[name]
        walls.append(time.time() - t0)
        _finish(workdir, entry, proc.returncode, log.name, walls[-1])
        write_manifest(workdir, manifest)
        logging.info('%s', progress_line(entries, walls, parallel))
  except BaseException:  # Ctrl-C, SIGTERM or a crash here: stop the children, keep their saves.
    for entry, proc, log, _ in running.values():
      proc.terminate()
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
      log.close()
      entry['status'] = 'interrupted'
    write_manifest(workdir, manifest)
    raise


def _submit(workdir: str, manifest: dict, entry: dict, res: slurm.Resources) -> None:
  point_dir = os.path.join(workdir, entry['name'])
  os.makedirs(point_dir, exist_ok=True)
  cmd = launch_command(manifest['config'], point_dir,
                       {'progress_bar': False, **manifest['shared_overrides'],
                        **entry['overrides']})
  name = f'{os.path.basename(os.path.abspath(workdir))}/{entry["name"]}'
  script = os.path.join(point_dir, 'slurm_job.sh')
  with open(script, 'w') as f:
    f.write(slurm.job_script(cmd, point_dir, os.path.join(point_dir, LOG_FILE), name, res,
                             os.getcwd()))
  with open(os.path.join(point_dir, LOG_FILE), 'a') as log:
    log.write(f'\n$ sbatch {script}  # srun {" ".join(cmd)}\n')
  slurm.clear_exit_code(point_dir)  # An earlier job's.
  entry.update(job_id=slurm.submit(script), status='pending', submitted=time.time())
  console.show(f'submitted {entry["name"]} as SLURM job {entry["job_id"]}'
               + (' (resuming)' if entry['resumed'] else ''))


def _job_ended(workdir: str, entry: dict, state: str | None) -> None:
  """Records a finished job: the exit code its script wrote, else SLURM's final state."""
  point_dir = os.path.join(workdir, entry['name'])
  log_path = os.path.join(point_dir, LOG_FILE)
  returncode = slurm.exit_code(point_dir)
  start = entry.pop('started', None) or entry.pop('submitted', time.time())
  entry.pop('submitted', None)
  _finish(workdir, entry, 1 if returncode is None else returncode, log_path, time.time() - start)
  if returncode is None:
    entry['returncode'] = None
    entry['error'] = (f'SLURM job {entry["job_id"]} ended {state or "(no longer in squeue)"} '
                      f'before launch.py did: {error_from_log(log_path, 1)}')
  try:
    with open(log_path, errors='replace') as f:
      this_run = f.read().rsplit('\n$ sbatch ', 1)[-1]
  except OSError:
    this_run = ''
  entry['before_training'] = entry['status'] == 'failed' and PREFLIGHT not in this_run


def _run_slurm_jobs(workdir: str, manifest: dict, res: slurm.Resources,
                    poll_seconds: float) -> None:
  """Submits every pending point as a job, then follows them until all have ended; a progress
  line (done / failed / running / pending in SLURM) on the terminal whenever it changes."""
  entries, walls, shown = manifest['points'], [], ['']

  def save() -> None:
    write_manifest(workdir, manifest)
    running = sum(e['status'] == 'running' for e in entries)
    line = progress_line(entries, walls, max(1, running))
    if line.split(', ETA')[0] != shown[0].split(', ETA')[0]:
      console.show(line)
    shown[0] = line

  def ended(entry: dict, state: str | None) -> None:
    _job_ended(workdir, entry, state)
    walls.append(entry['wall_seconds'])
    console.show(f'{entry["status"]}: {entry["name"]} (job {entry["job_id"]})'
                 + (f': {entry["error"]}' if entry['error'] else ''))
    save()

  slurm.follow_jobs([e for e in entries if e['status'] == 'pending'],
                    submit=lambda e: _submit(workdir, manifest, e, res), ended=ended,
                    save=save, poll_seconds=poll_seconds)


def cli(config_flag, workdir: str, parallel: int, executor: str = 'local',
        slurm_flags: dict | None = None) -> int:
  """`launch.py --mode=sweep`: runs the sweep; exit status 1 if any point failed, 2 if a SLURM job
  failed before training (its error line, often SLURM's own, is printed)."""
  def stop(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')

  signal.signal(signal.SIGTERM, stop)  # A scheduler's kill stops the points too, cleanly.
  try:
    manifest = run_sweep(config_flags.get_config_filename(config_flag), config_flag.value,
                         workdir, shared=dict(config_flags.get_override_values(config_flag)),
                         parallel=parallel, executor=executor, slurm_flags=slurm_flags)
  except KeyboardInterrupt:
    print('error: sweep interrupted; running points were stopped and keep their checkpoints. '
          'Run the same command again to resume (finished points are skipped).',
          file=sys.stderr)
    return 130
  failed = [e for e in manifest['points'] if e['status'] == 'failed']
  for e in failed:
    print(f'failed: {e["name"]}: {e["error"]}', file=sys.stderr)
  early = [e for e in failed if e.get('before_training')]
  if early:
    e = early[0]
    print(f'error: {len(early)} SLURM job(s) failed before training; the first, {e["name"]} '
          f'(job {e["job_id"]}, exit code {e["returncode"]}): {e["error"]} (log: '
          f'{os.path.join(workdir, e["name"], LOG_FILE)})', file=sys.stderr)
    return 2
  if failed:
    print(f'error: {len(failed)} of {len(manifest["points"])} sweep points failed (see '
          f'{os.path.join(workdir, MANIFEST)}); the others finished. Summarize with '
          f'python launch.py --mode=report --workdir={workdir}', file=sys.stderr)
    return 1
  print(f'Sweep finished. Summarize with: python launch.py --mode=report --workdir={workdir}',
        file=sys.stderr)
  return 0
