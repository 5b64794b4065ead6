"""On a live SLURM cluster (scripts/slurm_cluster.sh start; CI starts one): multi-host training,
preemption and requeue, a task killed outright.

* `srun -n 2 python launch.py` joins jax.distributed from SLURM's environment, builds the dataset
  once in a fresh data dir, and trains like one process with the same 2 devices.
* A `sbatch --requeue` job signalled with `scancel --signal=TERM` checkpoints and exits 0;
  `scontrol requeue` resumes it and it ends with the metrics of an uninterrupted run.
* One task of a 2-task job killed with SIGKILL: the other names it and exits, never hangs; the
  job submitted again resumes from the last complete checkpoint.
* `--sweep --executor=slurm`: points as jobs, a second submission refused (while the first sweep
  runs, and while its jobs do), a job that fails before training, a re-run that resubmits only
  what did not finish, the report; what SLURM refuses is one `error:` line, exit 2.

Skipped without a reachable cluster, failed instead under CI. Every job has a time limit and
every wait a deadline, so a regression fails instead of hanging.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, require_slurm
from helpers import assert_same_run, ensure_mnist, read_metrics, small_mlp_config, sweep_experiment

from research.errors import ConfigError
from research.tools import sweep as s
from research.tools import sweep_run
from research.tools.report import write_report

LAUNCH = [sys.executable, os.path.join(REPO, 'launch.py')]
LM_ARGS = ['--config=experiments/shakespeare_char.py:tiny', '--config.num_train_steps=8',
           '--config.log_every_steps=2', '--config.eval_every_steps=8',
           '--config.checkpoint_every_steps=4', '--config.sample.num_tokens=0',
           '--config.model.dropout_rate=0.1', '--config.progress_bar=False']
MLP_ARGS = ['--config=experiments/mnist_mlp.py:smoke', '--config.model.widths=(16,)',
            '--config.batch_size=16', '--config.eval_every_steps=1000000',
            '--config.progress_bar=False']
WAIT_S = 180  # Any one wait for a job; jobs themselves are limited to 5 minutes.
CACHE_DIR = ''  # Set by the `slurm` fixture.


def job_env(devices: int = 1) -> dict:
  """What jobs inherit (sbatch/srun export the environment): not the 8 devices of conftest; one
  compilation cache for every run of the module (the same few programs compile once)."""
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=CACHE_DIR,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def start(args: list[str], devices: int = 1) -> subprocess.Popen:
  """launch.py outside SLURM (the reference runs), under `timeout -s KILL`."""
  return subprocess.Popen(['timeout', '-s', 'KILL', '300', *LAUNCH, *args], cwd=REPO,
                          env=job_env(devices), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
  """Jobs submitted here (cancelled at the end, whatever happened)."""
  require_slurm()
  global CACHE_DIR
  CACHE_DIR = str(tmp_path_factory.mktemp('xla_cache'))
  jobs: list[str] = []
  yield jobs
  if jobs:
    subprocess.run(['scancel', '--signal=KILL', '--full', *jobs], capture_output=True)


def sbatch(jobs: list[str], script: str, log: str, *options: str) -> str:
  """Submits `script` (bash lines) as a batch job from the repo; returns its id."""
  result = subprocess.run(
      ['sbatch', '--parsable', f'--chdir={REPO}', f'--output={log}', '--open-mode=append',
       '--time=5', *options],
      input=f'#!/bin/bash\n{script}\n', env=job_env(), capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  jobs.append(result.stdout.strip().split(';')[0])
  return jobs[-1]


def job_info(job: str) -> dict[str, str]:
  """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...)."""
  out = subprocess.run(['scontrol', '-o', 'show', 'job', job], capture_output=True, text=True,
                       timeout=30).stdout
  return dict(re.findall(r'(\w+)=(\S*)', out))


def wait_job(job: str, done=lambda info: info.get('JobState') in ('COMPLETED', 'FAILED')) -> dict:
  deadline = time.monotonic() + WAIT_S
  while time.monotonic() < deadline:
    info = job_info(job)
    if done(info):
      return info
    time.sleep(0.5)
  raise TimeoutError(f'job {job}: {job_info(job)}')


def wait_for_file(job: str, log: str, ready) -> None:
  """Until `ready()` while the job runs; fails with its log if the job ends first."""
  deadline = time.monotonic() + WAIT_S
  while not ready():
    info = job_info(job)
    assert info.get('JobState') in ('PENDING', 'RUNNING'), (info, open(log).read()[-3000:])
    assert time.monotonic() < deadline, (info, open(log).read()[-3000:])
    time.sleep(0.1)


def has_checkpoint(workdir: str) -> bool:
  path = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path))


def checkpoint_steps(workdir: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def test_srun_two_tasks_build_the_data_once_and_train_like_one_process(
    slurm, tmp_path, data_dir):
  data, out = tmp_path / 'tfds', tmp_path / 'job.out'  # A fresh data dir: both tasks build it.
  # The one-process run with the same 2 devices, at the same time (its own data dir).
  one = start([*LM_ARGS, f'--config.data.data_dir={data_dir}', f'--workdir={tmp_path / "one"}'],
              devices=2)
  srun = subprocess.run(['timeout', '-s', 'KILL', '300', 'srun', '--ntasks=2', '--time=5',
                         f'--output={out}', *LAUNCH, *LM_ARGS, f'--config.data.data_dir={data}',
                         f'--workdir={tmp_path / "two"}'],
                        cwd=REPO, env=job_env(), capture_output=True, text=True)
  text = out.read_text() if out.exists() else ''
  assert srun.returncode == 0, srun.stderr[-2000:] + text[-3000:]
  for i in range(2):
    assert (f'preflight: process {i}/2, 1 local / 2 global devices (cpu), strategy jit, mesh '
            'data=2 x fsdp=1 x tensor=1') in text, text[-3000:]
  assert text.count('Dataset tiny_shakespeare downloaded and prepared') == 1, text[-3000:]
  assert one.wait(timeout=WAIT_S) == 0, one.stderr.read()[-3000:]
  got, want = read_metrics(str(tmp_path / 'two')), read_metrics(str(tmp_path / 'one'))
  assert_same_run(got, want)
  assert got[-1]['split'] == 'eval' and got[-1]['step'] == 8


def test_preempted_job_checkpoints_and_requeued_finishes_like_an_uninterrupted_run(
    slurm, tmp_path, data_dir):
  ensure_mnist(data_dir)
  args = [*MLP_ARGS, f'--config.data.data_dir={data_dir}', '--config.num_train_steps=2000',
          '--config.log_every_steps=50', '--config.checkpoint_every_steps=1000']
  # The uninterrupted run, outside SLURM, while the job runs.
  ref = start([*args, f'--workdir={tmp_path / "ref"}'])
  workdir, log = tmp_path / 'job', str(tmp_path / 'job.out')
  cmd = shlex.join([*LAUNCH, *args, f'--workdir={workdir}'])
  job = sbatch(slurm, f'srun {cmd}', log, '--requeue', '--signal=TERM@60')
  metrics = workdir / 'metrics.jsonl'
  wait_for_file(job, log, lambda: metrics.exists() and metrics.stat().st_size > 0)
  subprocess.run(['scancel', '--signal=TERM', job], check=True, timeout=30)
  info = wait_job(job)
  text = open(log).read()
  assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), text[-3000:]
  stopped = int(re.search(r'Stopped by SIGTERM after step (\d+)', text).group(1))
  assert stopped < 2000 and checkpoint_steps(str(workdir))[-1] == stopped
  subprocess.run(['scontrol', 'requeue', job], check=True, timeout=30)
  # SLURM holds a requeued job for about 2 minutes (its begin time); the test shortens the wait to
  # 5 s. Not to 0: a restart within the second the first run ended is refused by slurmd
  # ("Job credential revoked": the old run's credential is revoked at 1 s resolution).
  subprocess.run(['scontrol', 'update', f'jobid={job}', 'StartTime=now+5'], check=True,
                 timeout=30)
  info = wait_job(job, lambda i: i.get('Restarts') == '1' and i.get('JobState') == 'COMPLETED')
  text = open(log).read()
  assert info['ExitCode'] == '0:0' and f'Resumed from step {stopped}' in text, text[-3000:]
  assert ref.wait(timeout=WAIT_S) == 0, ref.stderr.read()[-3000:]
  assert_same_run(read_metrics(str(workdir)), read_metrics(str(tmp_path / 'ref')))


def test_a_task_killed_outright_stops_the_other_and_a_resubmission_resumes(
    slurm, tmp_path, data_dir):
  ensure_mnist(data_dir)
  workdir, log = tmp_path / 'job', str(tmp_path / 'job.out')
  args = [*MLP_ARGS, f'--config.data.data_dir={data_dir}', '--config.num_train_steps=60',
          '--config.log_every_steps=5', '--config.checkpoint_every_steps=10',
          '--config.step_timeout_s=20', '--initialization_timeout=120', f'--workdir={workdir}']
  script = f'srun --ntasks=2 --label --kill-on-bad-exit=0 {shlex.join([*LAUNCH, *args])}'
  job = sbatch(slurm, script, log, '--ntasks=2')
  wait_for_file(job, log, lambda: has_checkpoint(str(workdir)))
  # Task 1's processes, from slurmd's own table (PID JOBID STEPID LOCALID GLOBALID).
  rows = [r.split() for r in subprocess.run(['scontrol', 'listpids', job], capture_output=True,
                                            text=True, timeout=30).stdout.splitlines()[1:]]
  pids = [int(r[0]) for r in rows if len(r) == 5 and r[2] == '0' and r[4] == '1']
  assert pids, rows
  for pid in pids:
    os.kill(pid, signal.SIGKILL)
  killed_at = time.monotonic()
  info = wait_job(job)
  text = open(log).read()
  assert info['JobState'] == 'FAILED', text[-3000:]
  assert time.monotonic() - killed_at < 90  # The survivor stopped by itself, well before --time.
  survivor = '\n'.join(line for line in text.splitlines() if line.startswith('0: '))
  # An error line, or the watchdog's when the kill caught it inside a collective or a save.
  assert 'Process(es) [1] stopped sending heartbeats' in survivor, text[-3000:]
  assert re.search(r'task 0: Exited with exit code [1-9]', text), text[-3000:]
  last = checkpoint_steps(str(workdir))[-1]
  again = sbatch(slurm, script, log, '--ntasks=2')
  info = wait_job(again)
  text = open(log).read()
  assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), text[-3000:]
  assert f'0: Resumed from step {last} ' in text, text[-3000:]
  assert read_metrics(str(workdir))[-1]['step'] == 60


# The last point cannot find its data: it fails before training.
SWEEP_EXPERIMENT = sweep_experiment(16, 'Sweep', """
    return Sweep([{'optimizer.learning_rate': 1e-3}, {'optimizer.learning_rate': 3e-3},
                  {'optimizer.learning_rate': 1e-2, 'data.data_dir': 'EMPTY',
                   'data.manual_dir': 'EMPTY'}], slurm={'time': '5', 'ntasks': 1})
""")


def sweep_launch(exp, workdir, data_dir, *extra) -> list[str]:
  return ['timeout', '-s', 'KILL', '300', *LAUNCH, f'--config={exp}', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', '--sweep', '--executor=slurm', *extra]


def test_sweep_as_slurm_jobs(slurm, tmp_path, data_dir):
  ensure_mnist(data_dir)
  exp, workdir = tmp_path / 'exp.py', tmp_path / 'sw'
  exp.write_text(SWEEP_EXPERIMENT.replace('EMPTY', str(tmp_path / 'empty')))
  first = subprocess.Popen(sweep_launch(exp, workdir, data_dir), cwd=REPO, env=job_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  manifest = workdir / 'sweep.json'
  deadline = time.monotonic() + WAIT_S
  while not (manifest.exists() and '"job_id"' in manifest.read_text()):
    assert first.poll() is None and time.monotonic() < deadline, first.communicate()
    time.sleep(0.2)
  second = subprocess.run(sweep_launch(exp, workdir, data_dir), cwd=REPO, env=job_env(),
                          capture_output=True, text=True)
  assert second.returncode == 2 and 'error: Another sweep (pid' in second.stderr, second.stderr
  out, err = first.communicate(timeout=WAIT_S)
  assert first.returncode == 2, err[-3000:]  # A job failed before training.
  assert re.search(r'sweep: 2/3 done, 1 failed, 0 left \(0 running, 0 pending in SLURM\)', out)
  points = json.loads(manifest.read_text())['points']
  assert [p['status'] for p in points] == ['done', 'done', 'failed'], points
  assert points[2]['returncode'] == 2 and points[2]['before_training']
  assert points[2]['error'].startswith("error: Dataset 'mnist' is not built"), points[2]
  assert f'(job {points[2]["job_id"]}, exit code 2): error: Dataset' in err, err[-3000:]
  write_report(str(workdir))
  assert '2 done, 1 failed' in (workdir / 'report.md').read_text()
  # Again: the finished points are skipped, only the failed one is submitted.
  again = subprocess.run(sweep_launch(exp, workdir, data_dir), cwd=REPO, env=job_env(),
                         capture_output=True, text=True)
  assert again.returncode == 2 and again.stdout.count('submitted ') == 1, again.stdout
  assert f'submitted {points[2]["name"]} as SLURM job' in again.stdout
  again_points = json.loads(manifest.read_text())['points']
  assert [p['skipped'] for p in again_points] == [True, True, False]


def test_sweep_refused_while_an_earlier_submissions_jobs_run(slurm, tmp_path):
  workdir = tmp_path / 'sw'
  workdir.mkdir()
  live = sbatch(slurm, 'sleep 120', str(tmp_path / 'sleep.out'))
  before = {'points': [{'name': 'seed=0', 'job_id': live, 'status': 'running'}]}
  (workdir / 'sweep.json').write_text(json.dumps(before))
  with pytest.raises(ConfigError, match=rf'SLURM jobs \[.{live}.\] of an earlier submission'):
    sweep_run.run_sweep('x.py', small_mlp_config(), str(workdir), executor='slurm',
                        sweep=s.Sweep([{'seed': 0}]))
  assert json.loads((workdir / 'sweep.json').read_text()) == before  # Untouched.
  subprocess.run(['scancel', live], timeout=30)


def down_conf(tmp_path) -> str:
  """This cluster's slurm.conf with a port nobody listens on: slurmctld is 'down'."""
  conf = subprocess.run(['scontrol', 'show', 'config'], capture_output=True, text=True).stdout
  path = re.search(r'SLURM_CONF\s*=\s*(\S+)', conf).group(1)
  text = open(path).read() + '\nSlurmctldPort=1\nMessageTimeout=1\n'  # Fail fast.
  (tmp_path / 'slurm.conf').write_text(text)
  return str(tmp_path / 'slurm.conf')


@pytest.mark.parametrize('flags, words', [
    ({'partition': 'nope'}, 'invalid partition specified: nope'),
    ({'time': 'soon'}, 'Invalid --time specification'),
    ({'cpus_per_task': 4096}, 'Requested node configuration is not available'),
    ({'options': '--no-such-option'}, "unrecognized option '--no-such-option'"),
    ('down', 'Unable to contact slurm controller'),
])
def test_what_slurm_refuses_is_one_error_before_anything_is_written(
    slurm, tmp_path, monkeypatch, flags, words):
  if flags == 'down':
    monkeypatch.setenv('SLURM_CONF', down_conf(tmp_path))
    flags = {}
  match = f'SLURM refused the sweep.s job request .*{re.escape(words)}'
  with pytest.raises(ConfigError, match=match):
    sweep_run.run_sweep('x.py', small_mlp_config(), str(tmp_path / 'sw'), executor='slurm',
                        sweep=s.Sweep([{'seed': 0}]), slurm_flags=flags)
  assert not (tmp_path / 'sw').exists()


def test_launch_with_an_unknown_partition_exits_2(slurm, tmp_path):
  result = subprocess.run(sweep_launch('experiments/mnist_mlp.py:smoke', tmp_path / 'sw',
                                       tmp_path / 'data', '--slurm_partition=nope'),
                          cwd=REPO, env=job_env(), capture_output=True, text=True)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith('error: SLURM refused the sweep')
  assert 'invalid partition specified: nope' in result.stderr
  assert not (tmp_path / 'sw').exists()
