"""init_from: a masked-LM run's encoder carried into a classifier; freezing; clear refusals."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import REPO

import experiments.sst2_encoder as sst2_encoder
from research import models, optimizers, transfer
from research.checkpointing import complete_steps
from research.data.spec import Meta
from research.errors import ConfigError

ENCODER = ('cls_embed', 'final_norm', 'position_embed', 'stack', 'token_embed')


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def launch(args: list[str]) -> subprocess.Popen:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.Popen([sys.executable, os.path.join(REPO, 'launch.py'), *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, data_dir):
  """A real (tiny) masked-LM pre-training run on the SST-2 train sentences."""
  workdir = str(tmp_path_factory.mktemp('mlm'))
  process = launch(['--config=experiments/sst2_pretrain_mlm.py:tiny', f'--workdir={workdir}',
                    f'--config.data.data_dir={data_dir}'])
  _, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-3000:]
  return workdir


@pytest.fixture(scope='module')
def fine_tuned(pretrained, tmp_path_factory, data_dir):
  """Two fine-tuning runs from it at once: a good one (embeddings frozen) and a misfit one."""
  common = ['--config=experiments/sst2_encoder.py:tiny', f'--config.data.data_dir={data_dir}',
            f'--config.init_from={pretrained}']
  good, bad = str(tmp_path_factory.mktemp('ft')), str(tmp_path_factory.mktemp('misfit'))
  processes = [launch(common + [f'--workdir={good}', '--config.num_train_steps=20',
                                "--config.optimizer.freeze=('token_embed',)"]),
               launch(common + [f'--workdir={bad}', '--config.model.d_model=16'])]
  results = [(p.returncode, out, err) for p in processes
             for out, err in [p.communicate(timeout=600)]]
  return (good, *results[0]), (bad, *results[1])


def abstract_params(vocab_size):
  """The tiny SST-2 classifier and its params' shapes (nothing computed)."""
  model = models.get_model(sst2_encoder.get_config('tiny').model, Meta(
      task='classification', num_classes=2, vocab_size=vocab_size, max_len=64))
  ids = jnp.zeros((1, 64), jnp.int32)
  return model, jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids, ids)['params']))


def test_masked_lm_pretraining_learns(pretrained):
  train = [m for m in read_jsonl(os.path.join(pretrained, 'metrics.jsonl'))
           if m['split'] == 'train']
  assert train[-1]['loss'] < train[0]['loss'] - 0.5  # From ~ln(14k) = 9.6 nats down.


def test_init_from_loads_exactly_the_matching_parameters(pretrained):
  vocab = json.load(open(os.path.join(pretrained, 'vocab.json')))['tokens']
  model, shapes = abstract_params(len(vocab))
  plan = transfer.plan(pretrained, shapes)
  assert sorted(plan.loaded + plan.new) == sorted(transfer.flat_named(shapes))
  assert plan.step == 40 and plan.state_dir.endswith(os.path.join('checkpoints', '40', 'state'))
  assert all(n.split('/')[0] in ENCODER for n in plan.loaded)
  assert {n.split('/')[0] for n in plan.loaded} == set(ENCODER)
  assert set(plan.new) == {'head/kernel', 'head/bias'}
  assert {n.split('/')[0] for n in plan.skipped} == {'mlm_dense', 'mlm_norm', 'mlm_bias'}

  fresh = nn.unbox(jax.jit(model.init)(jax.random.key(7), jnp.zeros((1, 64), jnp.int32),
                                       jnp.ones((1, 64), jnp.int32))['params'])
  loaded = transfer.flat_named(transfer.apply(plan, fresh))
  saved = transfer.flat_named(ocp.StandardCheckpointer().restore(plan.state_dir)['params'])
  fresh = transfer.flat_named(fresh)
  for name, value in loaded.items():
    expected = saved[name] if name in plan.loaded else fresh[name]
    np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=name)


def test_fine_tuning_run_reports_what_it_loaded_freezes_and_shares_the_vocabulary(
    pretrained, fine_tuned):
  workdir, code, out, err = fine_tuned[0]
  assert code == 0, err[-3000:]
  assert 'newly initialised (only in this model): 2 arrays: head/* (2 arrays)' in out
  assert 'stack/* (' in out.split('loaded:')[1].split('\n')[0]
  record = json.load(open(os.path.join(workdir, 'init_from.json')))
  assert set(record['new']) == {'head/bias', 'head/kernel'}
  vocab = os.path.join(pretrained, 'vocab.json')
  assert open(os.path.join(workdir, 'vocab.json')).read() == open(vocab).read()
  before = ocp.StandardCheckpointer().restore(record['state_dir'])['params']
  after = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', '20', 'state'))['params']
  np.testing.assert_array_equal(after['token_embed']['embedding'],  # Frozen: as pre-trained.
                                before['token_embed']['embedding'])
  assert np.abs(after['stack']['block_0']['mlp']['up']['kernel'] -  # Fine-tuned.
                before['stack']['block_0']['mlp']['up']['kernel']).max() > 0


def test_shape_mismatch_and_missing_runs_are_refused_clearly(fine_tuned, tmp_path):
  workdir, code, _, err = fine_tuned[1]
  assert code == 2
  assert re.search(r'error: config.init_from: 20 parameter\(s\) of .* have another shape than '
                   r'this model builds:\n  cls_embed: checkpoint \(1, 32\), this model \(1, 16\)',
                   err), err[-2000:]
  assert not complete_steps(os.path.join(workdir, 'checkpoints'))  # Refused before step 1.
  _, shapes = abstract_params(100)
  with pytest.raises(ConfigError, match='does not exist'):
    transfer.plan(str(tmp_path / 'nowhere'), shapes)
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(ConfigError, match='no checkpoint under'):
    transfer.plan(str(tmp_path / 'empty'), shapes)


def test_freeze_and_encoder_lr_multiplier():
  params = {'stack': {'w': jnp.ones((2, 2))}, 'token_embed': {'embedding': jnp.ones((3, 2))},
            'head': {'kernel': jnp.ones((2, 2))}}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), params)
  opt = ml_collections.ConfigDict({'freeze': ('token_embed',), 'encoder_lr_multiplier': 0.1})
  tx = optimizers.partition_optimizer(optax.adam(1e-2), opt)
  updates, _ = tx.update(grads, tx.init(params), params)
  plain, _ = optax.adam(1e-2).update(grads, optax.adam(1e-2).init(params), params)
  np.testing.assert_array_equal(updates['token_embed']['embedding'], 0.0)
  np.testing.assert_allclose(updates['stack']['w'], 0.1 * plain['stack']['w'], rtol=1e-6)
  np.testing.assert_allclose(updates['head']['kernel'], plain['head']['kernel'], rtol=1e-6)
  with pytest.raises(ConfigError, match=r"\['stak'\] match no parameter"):
    optimizers.partition_optimizer(optax.adam(1e-2), ml_collections.ConfigDict(
        {'freeze': ('stak',), 'encoder_lr_multiplier': 1.0})).init(params)
  with pytest.raises(ConfigError, match='encoder_lr_multiplier must be > 0'):
    optimizers.partition_optimizer(optax.adam(1e-2), ml_collections.ConfigDict(
        {'freeze': (), 'encoder_lr_multiplier': 0.0}))
