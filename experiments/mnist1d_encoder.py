r"""Transformer encoder on MNIST-1D: each 40-step signal is a sequence of 2-step patches.

  python launch.py --config=experiments/mnist1d_encoder.py --workdir=/tmp/mnist1d \
      --config.data.data_dir=/tmp/tfds

Result, with the MNIST-1D paper's baselines for scale: docs/encoder.md#results. Presets:
`:default`; `:tiny` a few seconds, for tests.
"""

import ml_collections

from research.config import base_config
from research.data.tfds_build import default_manual_dir


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = base_config()
  c.num_train_steps = 3000  # 96 epochs of the 4000 training signals at batch 128.
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 1000

  c.model.name = 'transformer_encoder'
  c.model.patch_size = 2  # 40 / 2 = 20 patches.
  c.model.num_layers = 4
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.d_ff = 256
  c.model.dropout_rate = 0.1
  c.model.use_bias = True  # As ViT.
  # The rest is base_config's: [CLS] pooling, a position table of patches + 1, pre-LayerNorm
  # blocks with GELU and learned positions.

  c.data.name = 'mnist1d'
  c.data.manual_dir = default_manual_dir('mnist1d') or ''

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip_norm = 1.0

  if preset == 'tiny':
    c.num_train_steps = 200
    c.batch_size = 64
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    c.progress_bar = False
    c.model.num_layers = 1
    c.model.d_model = 32
    c.model.num_heads = 2
    c.model.d_ff = 64
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 10
    c.checkpoint.async_save = False
  elif preset != 'default':
    raise ValueError(f'Unknown preset {preset!r}; use :default or :tiny.')
  return c
