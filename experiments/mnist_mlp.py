r"""MLP on MNIST: the foundation experiment.

  python launch.py --config=experiments/mnist_mlp.py --workdir=/tmp/mnist_mlp

Result, and how it was measured: docs/models.md#result-mnist-mlp. Presets: `:default`; `:smoke`
a few hundred steps, for tests and a quick look.
"""

from research.config import base_config
from research.data.tfds_build import default_manual_dir
from research.tools.sweep import Sweep, product, sweep


def get_config(preset: str = 'default'):
  c = base_config()
  c.num_train_steps = 6000  # ~12.8 epochs at batch 128.
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000

  c.model.name = 'mlp'
  c.model.widths = (1024, 1024)
  c.model.activation = 'relu'
  c.model.dropout_rate = 0.2

  c.data.name = 'mnist'  # The TFDS dataset, read by the generic path (docs/data.md).
  c.data.manual_dir = default_manual_dir('mnist') or ''
  c.data.inputs = 'image'  # uint8, 28x28x1.
  c.data.targets = 'label'  # ClassLabel: 10 classes.
  c.data.preprocess = 'value_range(0, 1)'  # float32 pixels in [0, 1].

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip_norm = 1.0

  if preset == 'smoke':
    c.num_train_steps = 300
    c.log_every_steps = 50
    c.eval_every_steps = 150
    c.checkpoint_every_steps = 150
    c.model.widths = (256,)
  elif preset != 'default':
    raise ValueError(f'Unknown preset {preset!r}; use :default or :smoke.')
  return c


def get_sweep():
  """Width x dropout x 3 seeds; the baseline is the default model.

  python launch.py --config=experiments/mnist_mlp.py --workdir=/tmp/abl_mnist --sweep \
      --config.num_train_steps=1500 --config.eval_every_steps=250
  python launch.py --mode=report --workdir=/tmp/abl_mnist

  Result: docs/ablations.md#a-mnist-mlp-width--dropout--3-seeds.
  """
  return Sweep(product(sweep('model.widths', [(256,), (1024, 1024)]),
                       sweep('model.dropout_rate', [0.0, 0.2]),
                       sweep('seed', [0, 1, 2])),
               baseline={'model.widths': (1024, 1024), 'model.dropout_rate': 0.2})
