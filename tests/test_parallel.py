"""Every layout trains the same model the same way; shardings follow RULES; bad layouts fail early.

In-process (8 fake CPU devices): one device, 8-way data, FSDP, tensor, a 2x2x2 mix and pmap run
the same steps from the same init and must agree on every loss and the final parameters, also
with dropout on (the MLP, the LM with attention dropout, the encoder) and with gradient
accumulation. A state saved from the FSDP run restores onto 4 devices, 1 device and pmap and
continues identically.
"""

import functools
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest

from research import checkpointing, models, parallel
from research.data.spec import Meta
from research.errors import ConfigError
from research.train_step import eval_step, init_state, train_step

BATCH, STEPS = 16, 4
LAYOUTS = {
    '1 device': dict(data=1),
    'data=8': dict(data=8),
    'fsdp=8': dict(data=1, fsdp=8),
    'tensor=8': dict(data=1, tensor=8),
    'data2xfsdp2xtensor2': dict(data=2, fsdp=2, tensor=2),
    'pmap': dict(strategy='pmap'),
}
# The logical -> mesh axis table the README promises, written out independently of RULES.
EXPECTED_AXIS = {'embed': 'fsdp', 'mlp': 'tensor', 'heads': 'tensor', 'kv_heads': 'tensor'}


def parallel_config(**kw) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(strategy='jit', data=-1, fsdp=1, tensor=1))
  cfg.update(kw)
  return cfg


def mlp_case(dropout: float = 0.0):
  model = models.get_model(ml_collections.ConfigDict(dict(
      name='mlp', widths=(64, 32), activation='relu', dropout_rate=dropout)),
      Meta('classification', num_classes=10))
  rng = np.random.default_rng(0)
  inputs = [rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32) for _ in range(2 * STEPS)]
  # The label is the largest of the first 10 pixels: learnable in a few steps.
  batches = [{'inputs': x, 'targets': np.argmax(x.reshape(BATCH, -1)[:, :10], -1).astype(np.int32)}
             for x in inputs]
  return model, batches


def lm_model(**overrides):
  cfg = dict(name='transformer_lm', num_layers=1, d_model=32, num_heads=8, num_kv_heads=8,
             d_ff=64, dropout_rate=0.0, max_len=16)
  cfg.update(overrides)
  return models.get_model(ml_collections.ConfigDict(cfg), Meta('lm', vocab_size=48, block_size=16))


def lm_case(dropout: float = 0.0):
  # Counting sequences (each token is the previous + 1): learnable in a few steps.
  rng = np.random.default_rng(1)
  batches = []
  for _ in range(2 * STEPS):
    tokens = (rng.integers(0, 48, (BATCH, 1)) + np.arange(17)) % 48
    batches.append({'inputs': tokens[:, :-1].astype(np.int32),
                    'targets': tokens[:, 1:].astype(np.int32)})
  return lm_model(dropout_rate=dropout, attention_dropout_rate=dropout), batches


def encoder_case(dropout: float = 0.0):
  """A token classifier with padding: the label is whether the first token is in the upper half."""
  cfg = dict(name='transformer_encoder', num_layers=1, d_model=32, num_heads=8, d_ff=64,
             dropout_rate=dropout, attention_dropout_rate=dropout, pooling='cls')
  model = models.get_model(ml_collections.ConfigDict(cfg), Meta(
      task='classification', num_classes=2, vocab_size=48, max_len=12))
  rng = np.random.default_rng(2)
  batches = []
  for _ in range(2 * STEPS):
    tokens = rng.integers(1, 48, (BATCH, 12))
    mask = np.arange(12)[None] < rng.integers(4, 13, (BATCH, 1))
    batches.append({'inputs': np.where(mask, tokens, 0).astype(np.int32),
                    'input_mask': mask.astype(np.int32),
                    'targets': (tokens[:, 0] >= 24).astype(np.int32)})
  return model, batches


CASES = {'mlp': mlp_case, 'lm': lm_case}
# Dropout on everywhere the model has it (the LM and encoder: attention probabilities too).
DROPOUT_CASES = {'mlp dropout': functools.partial(mlp_case, 0.3),
                 'lm dropout': functools.partial(lm_case, 0.2),
                 'encoder dropout': functools.partial(encoder_case, 0.2)}
NO_DROPOUT = {'mlp dropout': 'mlp', 'lm dropout': 'lm'}
LAYOUT_DEVICES = {'1 device': 1, '4 devices, fsdp=4': 4}
LAYOUTS['4 devices, fsdp=4'] = dict(data=1, fsdp=4)  # Only as a restore target.


class Case:
  """A model, its batches and its initial state: built once, placed on each layout by device_put."""

  def __init__(self, name: str, tx=None):
    self.model, self.batches = {**CASES, **DROPOUT_CASES}[name]()
    self.tx = tx or optax.adam(optax.constant_schedule(1e-2))
    example = {k: v[:1] for k, v in self.batches[0].items()}
    self.init = functools.partial(init_state, self.model, self.tx, example, 0)
    self.boxed = jax.eval_shape(self.init)
    self.state0 = jax.device_get(jax.jit(lambda: nn.unbox(self.init()))())
    self._steps = {}

  def layout_and_step(self, layout_name: str, grad_accum_steps: int = 1):
    """The layout and its compiled train step (compiled once per case, layout and accumulation)."""
    if (layout_name, grad_accum_steps) not in self._steps:
      n = LAYOUT_DEVICES.get(layout_name)
      layout = parallel.make_layout(parallel_config(**LAYOUTS[layout_name]), self.boxed, BATCH,
                                    jax.devices()[:n] if n else None)
      p_train, _ = parallel.compile_steps(
          layout, functools.partial(train_step, apply_fn=self.model.apply, tx=self.tx,
                                    schedule=optax.constant_schedule(1e-2),
                                    grad_accum_steps=grad_accum_steps),
          functools.partial(eval_step, apply_fn=self.model.apply))
      self._steps[layout_name, grad_accum_steps] = layout, p_train
    return self._steps[layout_name, grad_accum_steps]

  def placed_state(self, layout):
    return jax.device_put(self.state0, layout.state_sharding)


@functools.cache
def case(name: str) -> Case:
  return Case(name)


def run(p_train, layout, state, batches):
  """Trains on `batches` from the global `state`; returns (losses, final global state)."""
  state = layout.to_strategy(state)
  losses = []
  for batch in batches:
    state, metrics = p_train(state, layout.put_batch(batch))
    losses.append(float(np.mean(np.asarray(metrics['loss']))))
  return losses, layout.to_global(state)


def host_params(state) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@functools.cache
def train_layout(case_name: str, layout_name: str, grad_accum_steps: int = 1):
  c = case(case_name)
  layout, p_train = c.layout_and_step(layout_name, grad_accum_steps)
  # One batch, STEPS times: the loss must fall, so agreement is not that of a frozen model.
  losses, state = run(p_train, layout, c.placed_state(layout), c.batches[:1] * STEPS)
  return losses, host_params(state)


def assert_same_training(got, want):
  (losses, params), (ref_losses, ref_params) = got, want
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  for g, w in zip(params, ref_params, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)  # Reduction order differs.


@pytest.mark.parametrize('case_name', [*CASES, *DROPOUT_CASES])
@pytest.mark.parametrize('layout_name', [n for n in LAYOUTS if n not in LAYOUT_DEVICES])
def test_every_layout_matches_one_device(case_name, layout_name):
  ref = train_layout(case_name, '1 device')
  assert ref[0][-1] < 0.9 * ref[0][0]
  assert_same_training(train_layout(case_name, layout_name), ref)


@pytest.mark.parametrize('case_name', list(NO_DROPOUT))
def test_dropout_cases_do_drop(case_name):
  # Agreement with dropout on would be vacuous if the masks were never applied.
  with_dropout, without = (train_layout(name, '1 device')[0]
                           for name in (case_name, NO_DROPOUT[case_name]))
  assert not np.allclose(with_dropout, without, rtol=1e-3), (with_dropout, without)


@pytest.mark.parametrize('case_name', list(DROPOUT_CASES))
@pytest.mark.parametrize('layout_name, grad_accum_steps', [('1 device', 2), ('pmap', 2)])
def test_grad_accumulation_keeps_each_examples_dropout_masks(case_name, layout_name,
                                                             grad_accum_steps):
  # Micro-batch i holds rows i, i + k, ...: each row keeps the masks it has without accumulation.
  assert_same_training(train_layout(case_name, layout_name, grad_accum_steps),
                       train_layout(case_name, '1 device'))


def _expected_spec(names: tuple) -> tuple:
  return tuple(EXPECTED_AXIS.get(n) for n in names)


@pytest.mark.parametrize('case_name', list(CASES))
def test_each_parameter_is_sharded_as_the_rules_say(case_name):
  c = case(case_name)
  layout, _ = c.layout_and_step('data2xfsdp2xtensor2')
  state = c.placed_state(layout)
  names = [box.names for box in jax.tree.leaves(
      c.boxed.params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))]
  sizes = dict(layout.mesh.shape)
  seen_axes = set()
  adam = state.opt_state[0]
  leaves = zip(jax.tree_util.tree_leaves_with_path(state.params), names,
               jax.tree.leaves(adam.mu), jax.tree.leaves(adam.nu), strict=True)
  for (path, param), logical, mu, nu in leaves:
    want = _expected_spec(tuple(logical))
    got = tuple(param.sharding.spec) + (None,) * (param.ndim - len(param.sharding.spec))
    assert got == want, (jax.tree_util.keystr(path), logical, got)
    shard = tuple(d // (sizes[a] if a else 1) for d, a in zip(param.shape, want, strict=True))
    assert param.addressable_shards[0].data.shape == shard
    # ZeRO-3: Adam's moments are sharded exactly like their parameter.
    assert mu.sharding == param.sharding and nu.sharding == param.sharding
    seen_axes.update(a for a in want if a)
  assert seen_axes == {'fsdp', 'tensor'}
  if case_name == 'lm':  # Heads and MLP hidden units are the tensor-sharded dims (Megatron).
    specs = {jax.tree_util.keystr(p): tuple(x.sharding.spec)
             for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    assert any('query' in k and s[:2] == ('fsdp', 'tensor') for k, s in specs.items())
    assert any("['up']" in k and s == ('fsdp', 'tensor') for k, s in specs.items())
    assert any("['down']" in k and s == ('tensor', 'fsdp') for k, s in specs.items())


def test_adafactor_factored_moments_get_valid_shardings_and_train():
  # Adafactor's row/column statistics inherit their parameter's logical names but not its shape.
  c = Case('mlp', tx=optax.adafactor(optax.constant_schedule(1e-2)))
  layout, p_train = c.layout_and_step('data2xfsdp2xtensor2')
  for leaf, sharding in zip(jax.tree.leaves(nn.unbox(c.boxed.opt_state)),
                            jax.tree.leaves(layout.state_sharding.opt_state), strict=True):
    assert len(sharding.spec) <= leaf.ndim
    shard = sharding.shard_shape(leaf.shape)  # Raises if a dimension does not divide.
    assert all(d % s == 0 for d, s in zip(leaf.shape, shard, strict=True))
  losses, _ = run(p_train, layout, c.placed_state(layout), c.batches[:1] * 3)
  assert losses[-1] < losses[0]


def test_checkpoint_from_fsdp8_restores_on_4_devices_1_device_and_pmap(tmp_path):
  c = case('mlp')
  first, rest = c.batches[:STEPS], c.batches[STEPS:]
  layout8, p_train8 = c.layout_and_step('fsdp=8')
  _, state = run(p_train8, layout8, c.placed_state(layout8), first)
  manager = checkpointing.make_manager(str(tmp_path), ml_collections.ConfigDict(
      dict(keep=1, best_metric='', best_mode='max', async_save=False)))
  checkpointing.save(manager, STEPS, state, {'step': STEPS})
  manager.wait_until_finished()
  want_losses, want_state = run(p_train8, layout8, state, rest)  # Uninterrupted.
  for name, num_devices in [('4 devices, fsdp=4', 4), ('1 device', 1), ('pmap', 8)]:
    layout, p_train = c.layout_and_step(name)
    abstract = checkpointing.abstract_like(nn.unbox(c.boxed), layout.state_sharding)
    step, restored, position = checkpointing.restore_latest(manager, abstract)
    assert (step, position) == (STEPS, {'step': STEPS})
    assert len(restored.params['dense_0']['kernel'].sharding.device_set) == num_devices, name
    losses, final = run(p_train, layout, restored, rest)
    np.testing.assert_allclose(losses, want_losses, rtol=2e-5, err_msg=name)
    for got, want in zip(host_params(final), host_params(want_state), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5, err_msg=name)
  manager.close()


def process_major(shape: tuple[int, int, int], processes: int) -> np.ndarray:
  """Each mesh device's process, as jax.make_mesh orders them: process 0's devices first."""
  return np.repeat(np.arange(processes), math.prod(shape) // processes).reshape(shape)


@pytest.mark.parametrize('shape, processes', [
    ((1, 1, 8), 2),  # tensor spans both processes: each would feed half the rows.
    ((2, 1, 4), 4),
    ((1, 2, 2), 4),
])
def test_a_batch_split_fewer_ways_than_processes_is_refused(shape, processes):
  process_of_device = process_major(shape, processes)
  with pytest.raises(ConfigError, match=f'must be a multiple of the process count {processes}'):
    parallel.check_process_rows(process_of_device, processes)


@pytest.mark.parametrize('shape, processes', [((2, 2, 2), 2), ((2, 1, 4), 2), ((1, 4, 2), 4),
                                              ((8, 1, 1), 8), ((1, 1, 8), 1)])
def test_a_batch_split_over_every_process_is_accepted(shape, processes):
  parallel.check_process_rows(process_major(shape, processes), processes)


def test_a_mesh_that_interleaves_processes_on_the_batch_axes_is_refused():
  with pytest.raises(ConfigError, match='puts devices of one process on batch rows another'):
    parallel.check_process_rows(np.tile([0, 1], 4).reshape(2, 1, 4), 2)


def _boxed(model, batches):
  example = {k: v[:1] for k, v in batches[0].items()}
  return jax.eval_shape(functools.partial(init_state, model, optax.adam(1e-3), example, 0))


@pytest.mark.parametrize('cfg, batch, match', [
    (dict(data=8), 12, 'batch size 12 does not divide over the data-parallel size 8'),
    (dict(data=2, fsdp=4), 20, r'data-parallel size 8 \(mesh data=2 x fsdp=4\)'),
    (dict(strategy='pmap'), 12, 'batch size 12 does not divide over 8 devices'),
    (dict(data=3), 24, r'data\*fsdp\*tensor = 3\*1\*1 = 3, but there are 8 devices'),
    (dict(data=2, fsdp=2, tensor=4), 16, '= 16, but there are 8 devices'),
    (dict(data=-1, fsdp=-1), 16, 'at most one may be -1'),
    (dict(data=-1, fsdp=3), 24, 'do not divide the 8 devices'),
    (dict(strategy='pmap', fsdp=2), 16, 'pmap replicates the state'),
    (dict(strategy='pjit'), 16, 'is not one of jit, pmap'),
])
def test_bad_layouts_fail_before_compute(cfg, batch, match):
  with pytest.raises(ConfigError, match=match):
    parallel.make_layout(parallel_config(**cfg), case('mlp').boxed, batch)


@pytest.mark.parametrize('overrides, match', [
    (dict(num_heads=6, num_kv_heads=6, d_model=48), r"dimension 6 is sharded over mesh axes"),
    (dict(num_heads=8, num_kv_heads=2), r"\['key\w*'\].*dimension 2 is sharded over mesh axes"),
    (dict(d_ff=42), r"\['mlp'\].*dimension 42 is sharded over mesh axes \('tensor',\)"),
])
def test_model_dims_must_divide_the_tensor_axis(overrides, match):
  _, batches = lm_case()
  boxed = _boxed(lm_model(**overrides), batches)
  with pytest.raises(ConfigError, match=match):
    parallel.make_layout(parallel_config(data=2, tensor=4), boxed, BATCH)
