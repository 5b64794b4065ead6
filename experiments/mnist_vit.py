r"""ViT-style encoder on MNIST: each 28x28 image is 16 patches of 7x7 pixels plus a [CLS] token.

  python launch.py --config=experiments/mnist_vit.py --workdir=/tmp/mnist_vit \
      --config.data.data_dir=/tmp/tfds

Result: docs/encoder.md#results. Presets: `:default`; `:tiny` a few seconds of training, for
tests.
"""

import ml_collections

from research.config import base_config
from research.data.tfds_build import default_manual_dir


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = base_config()
  c.num_train_steps = 4000  # ~8.5 epochs at batch 128.
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000

  c.model.name = 'transformer_encoder'
  c.model.patch_size = 7  # 28 / 7 = 4 -> 16 patches of 49 pixels.
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 256
  c.model.dropout_rate = 0.1
  c.model.use_bias = True  # As ViT.
  # The rest is base_config's: [CLS] pooling, a position table of patches + 1, pre-LayerNorm
  # blocks with GELU and learned positions.

  c.data.name = 'mnist'  # The TFDS dataset, read by the generic path (docs/data.md).
  c.data.manual_dir = default_manual_dir('mnist') or ''
  c.data.inputs = 'image'  # uint8, 28x28x1.
  c.data.targets = 'label'  # ClassLabel: 10 classes.
  c.data.preprocess = 'value_range(0, 1)'  # float32 pixels in [0, 1].

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip_norm = 1.0

  if preset == 'tiny':
    c.num_train_steps = 60
    c.batch_size = 64
    c.log_every_steps = 20
    c.eval_every_steps = 60
    c.checkpoint_every_steps = 60
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
