"""Weights & Biases (offline): same run across resumes, sweep points grouped, other sinks kept."""

import glob
import json
import os
import time

import pytest

from research.config import base_config
from research.metrics import MetricWriter
from research.tools import sweep as s
from research.tools import sweep_run

wandb = pytest.importorskip('wandb')


def write_config(workdir, **wandb_settings):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'seed': 0, 'wandb': wandb_settings}, f)


def test_metrics_go_to_one_wandb_run_across_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_SILENT', 'true')
  workdir = str(tmp_path / 'run')
  write_config(workdir, project='research-tests', mode='offline', group='sweep-g')
  writer = MetricWriter(workdir)
  writer.write(1, 'train', {'loss': 0.5})
  writer.write(2, 'eval', {'accuracy': 0.25})
  writer.close()
  run_id = open(os.path.join(workdir, 'wandb_run_id.txt')).read().strip()
  time.sleep(1.1)  # Offline run folders are named to the second.
  writer = MetricWriter(workdir)  # A resumed run.
  writer.write(3, 'eval', {'accuracy': 0.75})
  writer.close()
  wandb.teardown()  # The W&B service writes the run files; stopping it flushes them.
  assert open(os.path.join(workdir, 'wandb_run_id.txt')).read().strip() == run_id
  files = sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*', '*.wandb')))
  assert len(files) == 2 and all(f.endswith(f'run-{run_id}.wandb') for f in files)
  logged = [open(f, 'rb').read() for f in files]
  assert all(b'sweep-g' in data and b'eval/accuracy' in data for data in logged)
  assert b'train/loss' in logged[0]
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  assert len(lines) == 3 and os.path.isdir(os.path.join(workdir, 'tensorboard'))


def test_wandb_stays_off_without_a_project(tmp_path):
  workdir = str(tmp_path / 'run')
  write_config(workdir, project='')
  writer = MetricWriter(workdir)
  writer.write(1, 'train', {'loss': 0.5})
  writer.close()
  assert not os.path.exists(os.path.join(workdir, 'wandb'))


def test_sweep_points_share_a_wandb_group(tmp_path):
  config = base_config()
  config.wandb.project = 'p'
  commands = []

  def record(cmd, log):
    commands.append(cmd)
    raise KeyboardInterrupt  # Only the command matters here.

  with pytest.raises(KeyboardInterrupt):
    sweep_run.run_sweep('exp.py', config, str(tmp_path / 'abl'), sweep=s.Sweep(
        s.sweep('seed', [0, 1])), start=record)
  assert '--config.wandb.group=abl' in commands[0]
