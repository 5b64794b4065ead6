"""The three encoder tasks (MNIST ViT, MNIST-1D, SST-2) learn in short real runs: `launch.py` at
their :tiny presets, as concurrent processes on 1 fake CPU device each."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

TASKS = {  # Tiny presets, 1 CPU device each: accuracy floor.
    'mnist_vit': 0.25,  # 60 steps: 0.36 measured; chance 0.1.
    'mnist1d_encoder': 0.25,  # 200 steps: 0.365 measured; chance 0.1.
    'sst2_encoder': 0.65,  # 160 steps: 0.71-0.72 measured; dev majority class 0.51.
}


@pytest.fixture(scope='module')
def task_runs(tmp_path_factory, data_dir):
  """The three tasks' short real runs, as concurrent launch.py processes (both cores busy)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  runs = {}
  for name in TASKS:
    workdir = str(tmp_path_factory.mktemp(name))
    args = [sys.executable, os.path.join(REPO, 'launch.py'),
            f'--config=experiments/{name}.py:tiny', f'--workdir={workdir}',
            f'--config.data.data_dir={data_dir}']
    runs[name] = (workdir, subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True))
  out = {}
  for name, (workdir, process) in runs.items():
    log = process.communicate(timeout=600)[0]
    assert process.returncode == 0, log[-3000:]
    out[name] = json.load(open(os.path.join(workdir, 'summary.json')))
  return out


@pytest.mark.parametrize('name', list(TASKS))
def test_each_task_learns_in_a_short_real_run(name, task_runs):
  assert task_runs[name]['accuracy'] > TASKS[name], task_runs[name]
