"""research/models/encoder.py: padding, bidirectional masks, patches, bad input. Its three real
tasks: tests/integration/test_encoder_tasks.py; SST-2's batches: tests/test_data.py."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import experiments.mnist_vit as mnist_vit
import experiments.sst2_encoder as sst2_encoder
from research import models
from research.data.spec import Meta
from research.errors import ConfigError
from research.models.encoder import patchify
from research.train import train_and_evaluate

VOCAB = 50


def model_config(name='transformer_encoder', **overrides) -> ml_collections.ConfigDict:
  c = sst2_encoder.get_config('tiny').model
  c.name = name
  c.init_std = 0.5  # Spread activations, so a changed input visibly changes outputs.
  c.update(overrides)
  return c


def text_model(name='transformer_encoder', max_len=16, **overrides):
  meta = Meta(task='mlm' if name.endswith('mlm') else 'classification', num_classes=3,
              vocab_size=VOCAB, max_len=max_len)
  return models.get_model(model_config(name, **overrides), meta)


def init(model, *args):
  return nn.unbox(jax.jit(model.init)(jax.random.key(0), *args)['params'])  # jit: one compile.


def tokens_and_mask(lengths, width, seed=1):
  ids = np.array(jax.random.randint(jax.random.key(seed), (len(lengths), width), 3, VOCAB))
  mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int32)
  return np.where(mask, ids, 0).astype(np.int32), mask


@pytest.mark.parametrize('options', [
    {'pooling': 'cls'},
    {'pooling': 'mean', 'positions': 'rotary', 'scan_layers': True},
])
def test_extra_padding_leaves_the_logits_unchanged(options):
  model = text_model(max_len=24, **options)
  ids, mask = tokens_and_mask([5, 9, 1], 10)
  params = init(model, ids, mask)
  apply = jax.jit(lambda t, m: model.apply({'params': params}, t, m))
  pad = ((0, 0), (0, 14))
  np.testing.assert_allclose(apply(ids, mask), apply(np.pad(ids, pad), np.pad(mask, pad)),
                             atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional_and_never_sees_padding():
  # Per-position outputs (the MLM head), on both attention paths: the fused one (eval) and the
  # explicit softmax that attention dropout takes (train).
  model = text_model('transformer_encoder_mlm', attention_dropout_rate=0.1)
  ids, mask = tokens_and_mask([8, 12], 16)
  params = init(model, ids, mask)
  later = ids.copy()
  later[:, 6] = (later[:, 6] + 7) % (VOCAB - 3) + 3
  padded = ids.copy()
  padded[0, 8:] = 7  # Other ids where the mask says padding.
  padded[1, 12:] = 9
  valid = mask.astype(bool)
  for train in (False, True):
    apply = jax.jit(lambda t, m, train=train: model.apply(
        {'params': params}, t, m, train=train, rngs={'dropout': jax.random.key(3)}))
    before = np.asarray(apply(ids, mask))
    moved = np.abs(np.asarray(apply(later, mask))[:, :3] - before[:, :3]).max(-1)
    # Earlier positions see the later token (every one, unless dropout cut that very link).
    assert (moved.max(1) if train else moved).min() > 1e-3, (train, moved)
    np.testing.assert_array_equal(np.asarray(apply(padded, mask))[valid], before[valid])


def test_patches_are_the_image_tiles_in_row_major_order():
  image = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  patches = np.asarray(patchify(jnp.asarray(image), 2))
  assert patches.shape == (2, 6, 12)
  np.testing.assert_array_equal(patches[1, 4], image[1, 2:4, 2:4].reshape(-1))  # Row 1, col 1.
  signal = np.arange(2 * 40 * 1, dtype=np.float32).reshape(2, 40, 1)
  np.testing.assert_array_equal(np.asarray(patchify(jnp.asarray(signal), 4))[0, 3],
                                signal[0, 12:16, 0])


def test_bad_input_is_refused_before_compute():
  meta = Meta(task='classification', num_classes=10, input_shape=(28, 28, 1))
  with pytest.raises(ConfigError, match='patch_size=5'):
    models.get_model(model_config(patch_size=5), meta)
  with pytest.raises(ConfigError, match='max_len=10'):  # 16 patches + [CLS] > 10 positions.
    models.get_model(model_config(patch_size=7, max_len=10), meta)
  with pytest.raises(ConfigError, match='longer than the position table'):
    models.get_model(model_config(max_len=32), Meta(task='classification', num_classes=2,
                                                    vocab_size=VOCAB, max_len=64))
  model = text_model(max_len=16)  # Built for 16 tokens; fed 40 at trace time.
  ids, mask = tokens_and_mask([3], 40)
  with pytest.raises(ConfigError, match='max_len=17'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), ids, mask))
  with pytest.raises(ConfigError, match="needs a 'mlm' dataset"):
    models.get_model(model_config('transformer_encoder_mlm'),
                     Meta(task='classification', num_classes=2, vocab_size=9, max_len=8))


def test_a_run_with_an_indivisible_patch_size_fails_before_writing_anything(tmp_path, data_dir):
  config = mnist_vit.get_config('tiny')
  config.data.data_dir = data_dir
  config.model.patch_size = 5
  with pytest.raises(ConfigError, match='not divisible into patches'):
    train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')
  assert not os.path.exists(tmp_path / 'config.json')
