"""Several processes, other device counts: subprocesses of launch.py on 127.0.0.1 only.

* Two processes x 4 CPU devices joined by jax.distributed (gloo collectives) train the LM on a
  (data, fsdp, tensor) = (2, 2, 2) mesh that spans both, and with pmap over the 8 devices, and
  both match one process with 8 devices, with dropout on (the same masks whatever the layout).
* A checkpoint written by 8 devices with fsdp=8 resumes on 4 devices and on 1 and finishes with
  the same losses as the uninterrupted run.
* A coordinator that never answers fails within the timeout, with a message, instead of hanging.
* A mesh whose data x fsdp does not split over the processes is refused before compute.

Every subprocess runs under `timeout -s KILL`: a process stuck in a collective ignores SIGTERM.
"""

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import REPO
from helpers import assert_same_run, free_port
from helpers import read_metrics as metrics

from research.errors import ConfigError
from research.runtime import distributed

HARD_LIMIT_S = 240
LM_ARGS = ['--config=experiments/shakespeare_char.py:tiny', '--config.num_train_steps=8',
           '--config.log_every_steps=2', '--config.eval_every_steps=8',
           '--config.checkpoint_every_steps=4', '--config.sample.num_tokens=0',
           '--config.model.dropout_rate=0.1', '--config.model.attention_dropout_rate=0.1']


def start(args: list[str], devices: int, data_dir: str) -> subprocess.Popen:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  cmd = ['timeout', '-s', 'KILL', str(HARD_LIMIT_S), sys.executable,
         os.path.join(REPO, 'launch.py'), *args, f'--config.data.data_dir={data_dir}']
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(procs: list[subprocess.Popen]) -> list[str]:
  outs = [p.communicate()[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-3000:]
  return outs


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir) -> str:
  """One process, 8 devices, fsdp=8: the run the others must reproduce."""
  workdir = str(tmp_path_factory.mktemp('ref8'))
  finish([start([*LM_ARGS, f'--workdir={workdir}', '--config.parallel.data=1',
                 '--config.parallel.fsdp=8'], 8, data_dir)])
  return workdir


def test_two_processes_match_one_process(tmp_path, reference, data_dir):
  port = free_port()
  mesh = ['--config.parallel.data=2', '--config.parallel.fsdp=2', '--config.parallel.tensor=2']
  join = [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
          '--initialization_timeout=120']
  procs = [start([*LM_ARGS, *mesh, *join, f'--workdir={tmp_path}', f'--process_id={i}'], 4,
                 data_dir) for i in range(2)]
  outs = finish(procs)
  for i, out in enumerate(outs):
    assert (f'preflight: process {i}/2, 4 local / 8 global devices (cpu), strategy jit, mesh '
            'data=2 x fsdp=2 x tensor=2') in out
  got = metrics(str(tmp_path))  # Written by process 0 only: one line per log point.
  assert_same_run(got, metrics(reference))
  assert got[-1]['split'] == 'eval' and got[-1]['num_targets'] == 55769


def test_two_processes_with_pmap_match_one_process(tmp_path, reference, data_dir):
  # Also checks that pmap numbers its devices process-major, as train_step.global_rows assumes.
  port = free_port()
  join = [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
          '--initialization_timeout=120']
  procs = [start([*LM_ARGS, '--config.parallel.strategy=pmap', *join, f'--workdir={tmp_path}',
                  f'--process_id={i}'], 4, data_dir) for i in range(2)]
  outs = finish(procs)
  for i, out in enumerate(outs):
    assert f'preflight: process {i}/2, 4 local / 8 global devices (cpu), strategy pmap' in out
  assert_same_run(metrics(str(tmp_path)), metrics(reference))


def test_checkpoint_from_8_devices_resumes_on_4_and_on_1(tmp_path, reference, data_dir):
  procs = []
  for devices, fsdp in [(4, 4), (1, 1)]:
    workdir = tmp_path / f'd{devices}'
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / 'checkpoints' / '8')  # Keep step 4: resume from there.
    procs.append(start([*LM_ARGS, f'--workdir={workdir}', '--config.parallel.data=1',
                        f'--config.parallel.fsdp={fsdp}'], devices, data_dir))
  outs = finish(procs)
  for (devices, _), out in zip([(4, 4), (1, 1)], outs, strict=True):
    assert 'Resumed from step 4' in out
    assert f'{devices} local / {devices} global devices' in out
    assert_same_run(metrics(str(tmp_path / f'd{devices}')), metrics(reference), steps_from=4)


def test_coordinator_that_never_answers_fails_within_the_timeout(tmp_path, data_dir):
  common = [*LM_ARGS, '--num_processes=2', '--initialization_timeout=3']
  t0 = time.monotonic()
  # Process 1 with nobody at the address; process 0 whose peer never starts.
  procs = [start([*common, f'--workdir={tmp_path / str(i)}', f'--process_id={i}',
                  f'--coordinator_address=127.0.0.1:{free_port()}'], 4, data_dir)
           for i in (1, 0)]
  outs = [p.communicate()[0] for p in procs]
  assert time.monotonic() - t0 < 60  # The 3 s wait plus start-up; a hang would hit the limit.
  assert procs[0].returncode == 2, outs[0][-2000:]
  assert 'did not answer within 3s' in outs[0]
  assert procs[1].returncode == distributed.EXIT_TIMEOUT, outs[1][-2000:]
  assert 'did not come together within 3s' in outs[1]
  assert 'preflight' not in outs[0] + outs[1]  # Nothing was computed.


def test_a_mesh_that_splits_the_batch_fewer_ways_than_processes_fails_before_compute(tmp_path):
  # One device per process, tensor=2 spans both: each would feed half the rows its device needs.
  port = free_port()
  procs = [start([*LM_ARGS, '--config.parallel.data=1', '--config.parallel.tensor=2',
                  f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                  '--initialization_timeout=120', f'--workdir={tmp_path / str(i)}',
                  f'--process_id={i}'], 1, str(tmp_path / f'data{i}'))  # No shared TFDS build.
           for i in range(2)]
  outs = [p.communicate()[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert 'preflight' not in out, out[-2000:]  # Refused before any compute.
    assert p.returncode != 0
  # The coordinator's process refuses with the error; the other refuses the same way, unless the
  # coordination service tears it down first because its peer has exited (a race on 2 cores).
  assert procs[0].returncode == 2, outs[0][-2000:]
  for out in outs[:1] + [o for o in outs[1:] if '\nerror: ' in '\n' + o]:  # Its own line.
    assert 'error: config.parallel data=1 x fsdp=1 splits the batch 1 way(s)' in out, out[-2000:]
    assert 'must be a multiple of the process count 2' in out


@pytest.mark.parametrize('kw, match', [
    (dict(coordinator_address='127.0.0.1:1234', num_processes=2), r"missing \['--process_id'\]"),
    (dict(coordinator_address='127.0.0.1', num_processes=2, process_id=0), 'must be HOST:PORT'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2), r'must be in \[0, '),
    (dict(mode='off', coordinator_address='h:1', num_processes=2, process_id=0), 'conflicts'),
    (dict(timeout_s=0), 'positive number of seconds'),
])
def test_bad_distributed_flags(kw, match):
  with pytest.raises(ConfigError, match=match):
    distributed.initialize(distributed.Request(**kw))


def test_cluster_detection():
  slurm = dict(SLURM_JOB_ID='1', SLURM_STEP_NODELIST='n[1-2]', SLURM_NTASKS='2',
               SLURM_PROCID='0', SLURM_LOCALID='0')
  assert distributed.detect_cluster(slurm) == 'slurm'
  assert distributed.detect_cluster(dict(slurm, SLURM_NTASKS='1')) in (None, 'cloud_tpu')
  assert distributed.detect_cluster({'TPU_WORKER_HOSTNAMES': 'a,b'}) == 'gke_tpu'
