"""Two-process jobs: a process dies (kill -9) or is preempted (SIGTERM) while training.

Two `launch.py` processes on 127.0.0.1 (jax.distributed, gloo CPU collectives, 1 device each)
train the tiny MNIST MLP; once training is under way one of them gets the signal. A killed
process is named by the survivor, which stops within a bound; a preempted one stops both at the
same step, checkpoint saved. The three jobs run at once, every process under `timeout -s KILL`,
so a regression shows as a failure, not a hang.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from helpers import ensure_mnist, free_port, wait_for_metrics

BOUND_S = 60  # Kill -> survivor exit; measured ~0.3-4 s on a loaded 2-core machine.
ARGS = ['--config=experiments/mnist_mlp.py:smoke', '--config.num_train_steps=1000000',
        '--config.model.widths=(16,)', '--config.batch_size=16', '--config.log_every_steps=5',
        '--config.eval_every_steps=1000000', '--config.checkpoint_every_steps=50',
        '--config.progress_bar=False', '--config.step_timeout_s=20', '--num_processes=2',
        '--initialization_timeout=120']


def python_child(pid: int) -> int:
  """The python process `timeout` started."""
  with open(f'/proc/{pid}/task/{pid}/children') as f:
    return int(f.read().split()[0])


CASES = {'kill worker': (1, signal.SIGKILL), 'kill coordinator': (0, signal.SIGKILL),
         'preempt worker': (1, signal.SIGTERM)}  # case: (process signalled, signal)


@pytest.fixture(scope='module')
def jobs(tmp_path_factory, data_dir):
  ensure_mnist(data_dir)
  base = tmp_path_factory.mktemp('multiprocess')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=str(base / 'xla_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  jobs = {}
  for case in CASES:
    name, port = case.replace(' ', '_'), free_port()
    job = jobs[case] = {'workdir': str(base / name), 'procs': [], 'logs': []}
    for i in range(2):
      job['logs'].append(base / f'{name}_process{i}.log')
      cmd = ['timeout', '-s', 'KILL', '180', sys.executable, os.path.join(REPO, 'launch.py'),
             *ARGS, f'--config.data.data_dir={data_dir}', f'--workdir={job["workdir"]}',
             f'--coordinator_address=127.0.0.1:{port}', f'--process_id={i}']
      with open(job['logs'][-1], 'w') as log:
        job['procs'].append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                             stderr=subprocess.STDOUT))
  for case, (target, sig) in CASES.items():
    job = jobs[case]
    wait_for_metrics(os.path.join(job['workdir'], 'metrics.jsonl'), timeout=150)
    time.sleep(0.5)
    os.kill(python_child(job['procs'][target].pid), sig)
    job['signalled_at'] = time.monotonic()
  for case, (target, _) in CASES.items():
    job = jobs[case]
    job['rc'] = [None, None]
    for i in sorted(range(2), key=lambda i: i == target):  # The other process first.
      job['rc'][i] = job['procs'][i].wait(timeout=200)
      if i != target:
        job['seconds'] = time.monotonic() - job['signalled_at']
    job['log'] = [path.read_text() for path in job['logs']]
  print({case: (job['rc'], round(job['seconds'], 1)) for case, job in jobs.items()})
  return jobs


def test_worker_killed_coordinator_stops_and_names_it(jobs):
  job = jobs['kill worker']
  rc, log = job['rc'][0], job['log'][0]
  assert rc not in (0, 124, 137, -signal.SIGKILL), log[-3000:]  # It stopped by itself.
  assert job['seconds'] < BOUND_S
  assert 'Process(es) [1] stopped sending heartbeats' in log, log[-3000:]


def test_coordinator_killed_worker_stops_and_names_it(jobs):
  job = jobs['kill coordinator']
  rc, log = job['rc'][1], job['log'][1]
  assert rc not in (0, 124, 137, -signal.SIGKILL), log[-3000:]
  assert job['seconds'] < BOUND_S
  assert ('leader task was preempted/died' in log or
          'The coordinator (process 0) does not answer' in log), log[-3000:]


def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(jobs):
  job = jobs['preempt worker']
  assert job['rc'] == [0, 0], [log[-2000:] for log in job['log']]
  steps = [int(log.split('after step ')[1].split(':')[0]) for log in job['log']]
  assert steps[0] == steps[1] and 'Stopped by SIGTERM' in job['log'][1]
  assert 'Stopped by a stop signal on process 1' in job['log'][0]
  assert os.path.isdir(os.path.join(job['workdir'], 'checkpoints', str(steps[0])))
