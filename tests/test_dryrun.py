"""research/tools/dryrun.py: the train step compiled ahead of time from shapes, per-device bytes
reported (`launch.py --mode=dryrun`: tests/integration/test_launch_modes.py)."""


import jax
import ml_collections
import numpy as np
import pytest

from experiments import shakespeare_char as lm_config
from research import config as configs
from research.data.spec import Dataset, Meta
from research.errors import ConfigError
from research.tools import dryrun

WIDTHS = (256, 128)


def mlp_config(**parallel) -> ml_collections.ConfigDict:
  c = configs.base_config()
  c.batch_size = 64
  c.model.widths = WIDTHS
  c.model.activation = 'relu'
  c.model.dropout_rate = 0.0
  c.parallel.update(parallel)
  return c


def fake_dataset(batch_size: int) -> Dataset:
  """Shapes only: the dry run needs one host batch and the model's metadata, no real data."""
  batch = {'inputs': np.zeros((batch_size, 28, 28, 1), np.float32),
           'targets': np.zeros((batch_size,), np.int32)}
  return Dataset(train_batch=lambda step: batch, eval_batches=lambda: iter(()),
                 num_eval_examples=0, meta=Meta(task='classification', num_classes=10))


def report(**parallel) -> dict:
  config = mlp_config(**parallel)
  return dryrun.memory_report(config, fake_dataset(config.batch_size))


def test_fsdp_and_tensor_shrink_the_per_device_state_without_allocating_it():
  live_before = len(jax.live_arrays())
  dp, fsdp, tp = report(data=8), report(data=1, fsdp=8), report(data=1, tensor=8)
  assert len(jax.live_arrays()) == live_before  # Nothing was placed on the devices.
  dims = (784,) + WIDTHS + (10,)
  num_params = sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=False))
  assert dp['num_params'] == fsdp['num_params'] == num_params
  full = num_params * 4
  assert dp['per_device_bytes']['params'] == full  # Data parallel: every device holds it all.
  # fsdp=8 shards every 'embed' dim; dense_0's bias ('mlp') and the head's bias stay whole.
  whole = 256 + 10
  assert fsdp['per_device_bytes']['params'] == ((num_params - whole) // 8 + whole) * 4
  # tensor=8 shards the 'mlp' dims: dense_0 columns, dense_1 rows and dense_0's bias.
  tensor_sharded = 784 * 256 + 256 + 256 * 128
  assert tp['per_device_bytes']['params'] == (tensor_sharded // 8 + num_params - tensor_sharded) * 4
  for r in (dp, fsdp, tp):  # Adam: two moments shaped (and sharded) like the params, + counts.
    b = r['per_device_bytes']
    assert 2 * b['params'] <= b['optimizer_state'] <= 2 * b['params'] + 64
    assert b['activations_temp'] > 0 and b['total'] >= b['params'] + b['optimizer_state']
  assert fsdp['per_device_bytes']['total'] < dp['per_device_bytes']['total']


def test_fsdp_keeps_lm_activations_batch_sharded():
  # ZeRO-3 gathers weights, not activations: per-device temporaries stay those of data parallel
  # (left alone, XLA all-gathered the global batch: 2.2x the temporaries on this model).
  config = lm_config.get_config('tiny')
  config.batch_size, config.model.num_layers = 32, 1
  batch = {'inputs': np.zeros((32, config.data.block_size), np.int32)}
  batch['targets'] = batch['inputs']
  dataset = Dataset(train_batch=lambda step: batch, eval_batches=lambda: iter(()),
                    num_eval_examples=0, meta=Meta(task='lm', vocab_size=65, block_size=32))
  temp = {}
  for name, parallel in [('data', dict(data=8)), ('fsdp', dict(data=1, fsdp=8))]:
    config.parallel.update(parallel)
    temp[name] = dryrun.memory_report(config, dataset)['per_device_bytes']['activations_temp']
  assert temp['fsdp'] < 1.2 * temp['data'], temp


def test_pmap_dryrun_holds_a_full_replica_per_device():
  r = report(strategy='pmap')
  assert r['strategy'] == 'pmap' and r['per_device_bytes']['params'] == r['num_params'] * 4
  assert r['input_shapes']['inputs'] == [8, 8, 28, 28, 1]  # Devices x per-device rows.


def test_dryrun_rejects_layouts_before_compiling():
  config = mlp_config(data=8)
  config.batch_size = 60
  with pytest.raises(ConfigError, match='batch size 60 does not divide over the data-parallel'):
    dryrun.memory_report(config, fake_dataset(60))
  config = mlp_config(data=1, tensor=8)
  config.model.widths = (100,)
  with pytest.raises(ConfigError, match=r"dense_0.*dimension 100 is sharded"):
    dryrun.memory_report(config, fake_dataset(config.batch_size))


def test_dryrun_sizes_sst2_at_its_widest_length_bucket(data_dir):
  """SST-2 batches change width by length bucket (16, 32, 64); memory must be sized at the widest
  a run can see, not at step 0's."""
  from experiments import sst2_encoder
  from research import data

  config = sst2_encoder.get_config('tiny')
  config.data.data_dir = data_dir
  config.data.length_buckets = (16, 32)  # SST-2's own; the :tiny preset turns them off.
  config.parallel.data = 8
  dataset = data.get_dataset(config)
  assert dataset.train_batch(0)['inputs'].shape[1] < config.data.max_len  # Step 0 is narrower.
  r = dryrun.memory_report(config, dataset)
  assert r['input_shapes']['inputs'] == r['input_shapes']['input_mask'] == [config.batch_size, 64]
  assert r['batch_shapes_vary']
