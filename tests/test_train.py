"""End-to-end runs of the train loop on real MNIST (8 fake CPU devices, jit + Mesh path)."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import experiments.mnist_mlp as mnist_mlp
from research import optimizers
from research.train import train_and_evaluate


def smoke_config(data_dir, **overrides):
  config = mnist_mlp.get_config('smoke')
  config.data.data_dir = data_dir
  config.progress_bar = False
  config.checkpoint.async_save = False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def final_params(workdir, step):
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))
  return restored['params']


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('mnist'))
  summary = train_and_evaluate(smoke_config(data_dir), workdir)
  return workdir, summary


def test_short_real_run_learns(finished_run):
  workdir, summary = finished_run
  train = [m for m in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if m['split'] == 'train']
  assert train[-1]['loss'] < 0.5 * train[0]['loss']
  assert summary['accuracy'] >= 0.90  # 300 steps of a 256-wide MLP; ~92% measured.
  assert summary['num_targets'] == 10000  # The whole test split, padding excluded.
  for name in ('config.json', 'provenance.json', 'confusion_matrix.png', 'summary.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  provenance = json.load(open(os.path.join(workdir, 'provenance.json')))
  assert provenance['packages']['jax'] and len(provenance['config_hash']) == 16
  evals = [m for m in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if m['split'] == 'eval']
  assert {'loss', 'accuracy', 'macro_precision', 'macro_recall', 'macro_f1'} <= set(evals[-1])


def test_same_config_and_seed_give_identical_metrics(finished_run, tmp_path, data_dir):
  workdir, _ = finished_run
  train_and_evaluate(smoke_config(data_dir), str(tmp_path))
  want = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert read_jsonl(tmp_path / 'metrics.jsonl') == want


def test_resume_equals_uninterrupted_run(finished_run, tmp_path, data_dir):
  workdir, _ = finished_run
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '300'))  # As if stopped after step 150.
  lines = read_jsonl(os.path.join(resumed, 'metrics.jsonl'))
  with open(os.path.join(resumed, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(m) + '\n' for m in lines if m['step'] <= 150)
  train_and_evaluate(smoke_config(data_dir), resumed)
  want, got = final_params(workdir, 300), final_params(resumed, 300)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert read_jsonl(os.path.join(resumed, 'metrics.jsonl')) == read_jsonl(
      os.path.join(workdir, 'metrics.jsonl'))


def test_raising_num_train_steps_extends_a_finished_run(finished_run, tmp_path, data_dir):
  workdir, _ = finished_run
  extended = str(tmp_path / 'extended')
  shutil.copytree(workdir, extended)
  summary = train_and_evaluate(smoke_config(data_dir, num_train_steps=350, log_every_steps=1),
                               extended)
  assert summary['step'] == 350
  metrics = read_jsonl(os.path.join(extended, 'metrics.jsonl'))
  steps = [m['step'] for m in metrics]
  assert max(steps) == 350 and steps.count(300) >= 1
  # The schedule keeps its original length: past its end the LR stays final (it used to be
  # stretched over 350 steps, jumping from 0 back to 2.5e-4 at step 301).
  _, original = optimizers.make_optimizer(smoke_config(data_dir).optimizer, 300)
  logged = [m['learning_rate'] for m in metrics if m['split'] == 'train' and m['step'] > 300]
  assert len(logged) == 50 and logged[0] == float(original(300))
  assert logged == [float(original(300 + 49))] * 50
  recorded = json.load(open(os.path.join(extended, 'config.json')))
  assert recorded['num_train_steps'] == 350 and recorded['optimizer']['decay_steps'] == 300
