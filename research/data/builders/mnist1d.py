"""MNIST-1D (Greydanus 2020): 40-step 1-D signals of the ten digits, 4000 train / 1000 test.

Built from the canonical `mnist1d_data.pkl` (GitHub greydanus/mnist1d) in the manual dir. A
pickle can run code when loaded, so this builder unpickles only that exact trusted file: its
sha256 is checked first, and any other file is refused without being opened by pickle.
"""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

FILE = 'mnist1d_data.pkl'
SHA256 = 'e95257676e9fb04568e46dda007da22cc8664ccba1451456afde55d7f6dd6aa5'
LENGTH = 40


def load_trusted_pickle(path: epath.Path) -> dict:
  """The canonical pickle's dict; anything else (a different sha256) is refused unopened."""
  raw = path.read_bytes()
  digest = hashlib.sha256(raw).hexdigest()
  if digest != SHA256:
    raise ValueError(f'{path} has sha256 {digest}, not the canonical MNIST-1D pickle\'s {SHA256}. '
                     'Refusing to unpickle it (a pickle can run code); use the original file.')
  return pickle.loads(raw)  # noqa: S301 - the trusted file, verified byte for byte above.


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """Ten classes of 40-sample signals (the digits' outlines, shifted, scaled, noised)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'The canonical mnist1d_data.pkl, read from a manual dir.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put {FILE} from GitHub greydanus/mnist1d (sha256 {SHA256}) in the manual dir '
      '(--config.data.manual_dir).')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'signal': tfds.features.Tensor(shape=(LENGTH,), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('signal', 'label'),
        homepage='https://github.com/greydanus/mnist1d')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    data = load_trusted_pickle(epath.Path(dl_manager.manual_dir) / FILE)
    return {'train': self._generate_examples(data['x'], data['y']),
            'test': self._generate_examples(data['x_test'], data['y_test'])}

  def _generate_examples(self, x: np.ndarray, y: np.ndarray):
    for i, (signal, label) in enumerate(zip(x, y, strict=True)):
      yield i, {'signal': signal.astype(np.float32), 'label': int(label)}
