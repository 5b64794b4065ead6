r"""Your own dataset in the experiment file: MNIST read straight from its idx files, no TFDS.

  python launch.py --config=experiments/own_data_mnist.py --workdir=/tmp/own_data_mnist

`get_data(config)` below is all it takes to train on new data: it returns {split: {feature:
array}}, and `c.data.get_data = __file__` points the data module at it; nothing under research/
changes (docs/data.md#your-own-dataset). The rest is plain config: which features are the inputs
and the targets, the preprocessing ops, the number of classes. Presets: `:default` (the MLP recipe
of experiments/mnist_mlp.py), `:smoke` a few steps, for tests.
"""

import gzip
import os

import numpy as np

from research.config import base_config
from research.data.tfds_build import SHARED_DATA

IDX_DIR = os.path.join(SHARED_DATA, 'mnist')  # The four idx .gz files (../shared/data/mnist).


def read_idx(path: str) -> np.ndarray:
  """An idx file: a big-endian header (dims), then uint8 values."""
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def get_data(config):
  """{split: {'image': uint8 N x 28 x 28 x 1, 'label': N class ids}}."""
  folder = config.data.manual_dir or IDX_DIR
  out = {}
  for split, prefix in ((config.data.train_split, 'train'), (config.data.eval_split, 't10k')):
    images = read_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte.gz'))
    labels = read_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte.gz'))
    out[split] = {'image': images[..., None], 'label': labels.astype(np.int32)}
  return out


def get_config(preset: str = 'default'):
  c = base_config()
  c.num_train_steps = 6000
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000

  c.model.name = 'mlp'
  c.model.widths = (1024, 1024)
  c.model.dropout_rate = 0.2

  c.data.name = 'mnist_idx'  # A label for logs and the resume check.
  c.data.get_data = os.path.abspath(__file__)  # get_data() above.
  c.data.manual_dir = IDX_DIR  # Read by get_data (any key of the config is).
  c.data.inputs = 'image'
  c.data.targets = 'label'
  c.data.num_classes = 10
  c.data.preprocess = 'value_range(0, 1)'

  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip_norm = 1.0

  if preset == 'smoke':
    c.num_train_steps = 20
    c.batch_size = 32
    c.log_every_steps = 10
    c.eval_every_steps = 20
    c.checkpoint_every_steps = 20
    c.progress_bar = False
    c.model.widths = (64,)
    c.optimizer.warmup_steps = 5
    c.checkpoint.async_save = False
  elif preset != 'default':
    raise ValueError(f'Unknown preset {preset!r}; use :default or :smoke.')
  return c
