"""research/flops.py: the model FLOP formulas against every experiment's real train step as XLA
counts it, against the real models' parameter trees, and the peak table's device-kind matching."""

import functools
import glob
import importlib
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from conftest import REPO

import experiments.gpt2_small as gpt2_small
from research import data, models, optimizers
from research.data.spec import Meta
from research.tools import flops
from research.train_step import init_state, train_step


@pytest.mark.parametrize('kind, peak', [
    ('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA H200', 989e12),
    ('NVIDIA GH200 480GB', 989e12), ('NVIDIA A100-SXM4-80GB', 312e12),
    ('NVIDIA A100-PCIE-40GB', 312e12), ('NVIDIA L4', 121e12), ('NVIDIA L40', 181e12),
    ('NVIDIA L40S', 362e12), ('NVIDIA B200', 2250e12), ('TPU v2', 22.5e12), ('TPU v3', 61.5e12),
    ('TPU v4', 275e12), ('TPU v5 lite', 197e12), ('TPU v5', 459e12), ('TPU v5p', 459e12),
    ('TPU v6 lite', 918e12), ('cpu', None), ('NVIDIA GeForce GTX 1080', None),
    ('NVIDIA L40G', None), ('TPU v40', None)])
def test_peak_table_matches_whole_words_longest_name_first(kind, peak):
  assert flops.table_peak_flops(kind) == peak


def matmul_weights(params) -> int:
  """Sizes of the weights that multiply activations, read off the real parameter tree: every
  kernel, plus the token table (tied: it is the output head); not the position table."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name or 'token_embed' in name:
      total += leaf.size
  return total


@pytest.mark.parametrize('overrides', [{}, {'num_kv_heads': 1, 'mlp': 'swiglu', 'd_ff': 48}])
def test_transformer_formula_counts_the_models_matmul_weights(overrides):
  cfg = ml_collections.ConfigDict(dict(name='transformer_lm', num_layers=3, d_model=32,
                                       num_heads=4, num_kv_heads=0, d_ff=0, max_len=16))
  cfg.update(overrides)
  model = models.get_model(cfg, Meta(task='lm', vocab_size=50, block_size=16))
  params = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), np.zeros((1, 16), np.int32))['params']))
  n = flops.transformer_matmul_params(
      num_layers=3, d_model=32, num_heads=4, num_kv_heads=cfg.num_kv_heads or 4,
      d_ff=cfg.d_ff or 128, vocab_size=50, swiglu=cfg.get('mlp') == 'swiglu')
  assert n == matmul_weights(params)
  batch = {'inputs': jax.ShapeDtypeStruct((8, 16), np.int32)}
  step_flops, formula = flops.train_step_flops(cfg, Meta(task='lm', vocab_size=50), batch)
  assert step_flops == (6 * n + 12 * 3 * 16 * 32) * 8 * 16 and '12 * L * T * d' in formula


def encoder_params(cfg: ml_collections.ConfigDict, meta: Meta, example: dict):
  model = models.get_model(cfg, meta)
  return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), **example)['params']))


def test_encoder_counts_positions_patch_embedding_and_heads_from_the_model():
  """Sequence length from the patch grid + [CLS], not the input's second dimension; the patch
  embedding and the heads from the real parameter tree: the classifier's once per example, the
  masked LM's (dense + tied vocabulary) per predicted position."""
  cfg = ml_collections.ConfigDict(dict(name='transformer_encoder', num_layers=2, d_model=16,
                                       num_heads=2, d_ff=32, patch_size=7, pooling='cls'))
  meta = Meta(task='classification', num_classes=10, input_shape=(28, 28, 1))
  params = encoder_params(cfg, meta, {'inputs': np.zeros((1, 28, 28, 1), np.float32)})
  assert flops.encoder_positions(cfg, (28, 28, 1)) == 16 + 1  # Not 28 image rows.
  signal = ml_collections.ConfigDict(dict(cfg, patch_size=2))
  assert flops.encoder_positions(signal, (40, 1)) == 20 + 1  # Not 40 time steps.
  assert flops.encoder_positions(ml_collections.ConfigDict(dict(cfg, pooling='mean')), (64,)) == 64
  terms, _ = flops.train_step_flop_terms(
      cfg, meta, {'inputs': jax.ShapeDtypeStruct((4, 28, 28, 1), np.float32)})
  assert terms['embedding'] == 4 * params['patch_embed']['kernel'].size * 4 * 16
  assert terms['head'] == 6 * params['head']['kernel'].size * 4
  layers = matmul_weights(params['stack'])
  assert terms['weights'] == 6 * layers * 4 * 17
  assert terms['attention'] == 12 * 2 * 17 * 16 * 4 * 17

  mlm = ml_collections.ConfigDict(dict(name='transformer_encoder_mlm', num_layers=1, d_model=16,
                                       num_heads=2, d_ff=32, pooling='cls'))
  meta = Meta(task='mlm', vocab_size=40, max_len=12)
  params = encoder_params(mlm, meta, {'inputs': np.zeros((1, 12), np.int32),
                                      'input_mask': np.ones((1, 12), np.int32)})
  batch = {'inputs': jax.ShapeDtypeStruct((4, 12), np.int32),
           'mlm_positions': jax.ShapeDtypeStruct((4, 3), np.int32)}
  terms, _ = flops.train_step_flop_terms(mlm, meta, batch)
  head = params['mlm_dense']['kernel'].size + params['token_embed']['embedding'].size
  assert terms['head'] == 6 * head * 4 * 3 and 'embedding' not in terms
  assert terms['weights'] == 6 * matmul_weights(params['stack']) * 4 * 13


def test_mlp_counts_the_input_layer_without_its_input_gradient():
  cfg = ml_collections.ConfigDict(dict(name='mlp', widths=(1024, 1024)))
  batch = {'inputs': jax.ShapeDtypeStruct((128, 28, 28, 1), np.float32)}
  first, rest = 784 * 1024, 1024 * 1024 + 1024 * 10
  meta = Meta('classification', num_classes=10)
  assert flops.train_step_flops(cfg, meta, batch)[0] == (4 * first + 6 * rest) * 128
  # GPT-2 small's shape: 12 * 12 * 768^2 = 84.9M matmul weights in the layers.
  c = gpt2_small.get_config()
  layers = flops.transformer_matmul_params(
      num_layers=c.model.num_layers, d_model=c.model.d_model, num_heads=c.model.num_heads,
      num_kv_heads=c.model.num_heads, d_ff=4 * c.model.d_model, vocab_size=0)
  assert (layers, c.data.block_size) == (12 * 12 * 768**2, 1024)


# Every experiment file, at a size where attention is a material share of the step (so the band
# below cannot pass without the attention term, which the test checks too) and with dropout off
# (XLA would count its random-bit generation). Compiled only, never run: the batch size is free.
SMALL = {'model.dropout_rate': 0.0, 'model.d_model': 64, 'model.num_heads': 1, 'model.d_ff': 64}
WIDE = {'model.dropout_rate': 0.0, 'model.d_model': 128, 'model.num_heads': 2, 'model.d_ff': 256}
BUCKETS = {'data.length_buckets': (16, 32)}  # SST-2's own; the step is counted at the widest.
XLA_CASES = {
    'mnist_mlp': ('smoke', {}),
    'shakespeare_char': ('tiny', {**WIDE, 'model.d_ff': 0, 'data.block_size': 256,
                                  'model.max_len': 256}),
    'gpt2_small': ('default', {'model.num_layers': 2, 'batch_size': 1}),
    # Packed: the segment mask adds elementwise work only.
    'lm_corpus': ('tiny', {**WIDE, 'model.d_ff': 0, 'data.block_size': 256, 'model.max_len': 256,
                           'data.packing': True}),
    # Its BPE tokenizer (vocab 512) from the hf: fixture; the model shape here, not config.json's.
    'gpt2_tiny_shakespeare': ('tiny', {**WIDE, 'model.d_ff': 0, 'data.block_size': 255,
                                       'model.max_len': 256}),
    'mnist_vit': ('tiny', {**WIDE, 'model.patch_size': 2}),
    'mnist1d_encoder': ('tiny', {**SMALL, 'model.d_ff': 32}),
    'sst2_encoder': ('tiny', {**SMALL, **BUCKETS, 'batch_size': 256}),
    # A smaller vocabulary, or the masked-LM head would dwarf attention.
    'sst2_pretrain_mlm': ('tiny', {**SMALL, **BUCKETS, 'batch_size': 64,
                                   'data.vocab_min_count': 300}),
    'own_data_mnist': ('smoke', {'batch_size': 128, 'model.widths': (256,)}),  # mnist_mlp's.
    'own_data_sst2': ('smoke', {**SMALL, 'batch_size': 256}),
}
# model / XLA FLOPs: XLA also counts elementwise ops, norms, softmax and the optimizer (a few %).
BAND = (0.9, 1.02)


def test_every_experiment_file_has_a_flops_case():
  files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'experiments', '*.py'))}
  assert files - {'__init__'} == set(XLA_CASES)


def xla_train_step_flops(config: ml_collections.ConfigDict) -> tuple[float, dict, dict]:
  """(XLA's FLOPs of the jitted train step on the largest batch, the dataset meta, the batch)."""
  dataset = data.get_dataset(config, 0, 1)
  model = models.get_model(config.model, dataset.meta)
  tx, schedule = optimizers.make_optimizer(config.optimizer, config.num_train_steps)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
           for k, v in dataset.largest_train_batch(0).items()}
  example = {k: jax.ShapeDtypeStruct((1,) + v.shape[1:], v.dtype) for k, v in batch.items()}
  state = jax.eval_shape(lambda ex: nn.unbox(init_state(model, tx, ex, config.seed)), example)
  step = functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=schedule)
  compiled = jax.jit(step).lower(state, batch).compile()
  return flops.xla_flops(compiled), dataset.meta, batch


@pytest.mark.parametrize('name', sorted(XLA_CASES))
def test_model_flops_match_xla_for_every_experiment(name, data_dir):
  preset, overrides = XLA_CASES[name]
  config = importlib.import_module(f'experiments.{name}').get_config(preset)
  config.data.data_dir = data_dir
  config.update_from_flattened_dict(overrides)
  xla, meta, batch = xla_train_step_flops(config)
  model, _ = flops.train_step_flops(config.model, meta, batch)
  assert BAND[0] < model / xla < BAND[1], (model, xla, model / xla)
  terms, _ = flops.train_step_flop_terms(config.model, meta, batch)
  if 'attention' in terms:  # The band is tight enough to catch a missing attention term.
    assert (model - terms['attention']) / xla < BAND[0], (terms, xla)
