"""The generic dataset path: a TFDS dataset no module knows (built here, in a temp data dir), read
by config alone: its Meta from the data, batches through the op list, the facts saved for export,
and a clear error for each bad name, key or unbuilt dataset."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from conftest import REPO
from helpers import store_toy_tfds

from research import data
from research.config import base_config
from research.data import generic
from research.errors import ConfigError


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp('toy_tfds'))
  store_toy_tfds(path)
  return path


def toy_config(toy_dir, **data_keys) -> ml_collections.ConfigDict:
  c = base_config()
  c.batch_size, c.eval_batch_size = 8, 5
  c.data.name, c.data.data_dir, c.data.manual_dir = 'toy_shapes', toy_dir, ''
  c.data.update(data_keys)
  return c


def test_a_tfds_dataset_by_name_classifies_with_its_own_meta(toy_dir, tmp_path):
  config = toy_config(toy_dir, preprocess='value_range(0, 1)|random_crop(6, pad=1)|flip_lr')
  dataset = data.get_dataset(config, workdir=str(tmp_path))
  assert dataset.meta == data.Meta(task='classification', num_classes=3, input_shape=(6, 6, 3))
  batch = dataset.train_batch(2)
  assert batch['inputs'].dtype == np.float32 and batch['inputs'].shape == (8, 6, 6, 3)
  np.testing.assert_array_equal(dataset.train_batch(2)['inputs'], batch['inputs'])  # Pure.
  halves = [generic.get_dataset(config, i, 2).train_batch(2) for i in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h['inputs'] for h in halves]), batch['inputs'])
  evals = list(dataset.eval_batches())
  assert sum(b['mask'].sum() for b in evals) == dataset.num_eval_examples == 12
  spec = data.get_spec(config, str(tmp_path))  # What export and inference read back.
  assert spec.read_meta(config, str(tmp_path)) == dataset.meta
  assert spec.labels == ('left', 'middle', 'right') and 'dataset.json' in spec.assets
  raw = np.full((2, 8, 8, 3), 255, np.uint8)
  np.testing.assert_array_equal(spec.prepare(raw), np.ones((2, 6, 6, 3), np.float32))
  prepared = np.full((2, 6, 6, 3), 0.5, np.float32)  # Already as training fed them: kept.
  np.testing.assert_array_equal(spec.prepare(prepared), prepared)


def test_a_text_feature_trains_a_language_model_or_a_text_classifier(toy_dir, tmp_path):
  config = toy_config(toy_dir, inputs='caption', targets='')
  config.data.block_size = 4
  (tmp_path / 'lm').mkdir()  # Training's workdir exists before the data is read.
  lm = data.get_dataset(config, workdir=str(tmp_path / 'lm'))
  assert lm.meta.task == 'lm' and lm.meta.vocab_size == len(set('one fish two red blue\n'))
  assert lm.train_batch(0)['inputs'].shape == (8, 4)
  assert data.get_spec(config, str(tmp_path / 'lm')).load_tokenizer(str(tmp_path / 'lm'))
  text = data.get_dataset(toy_config(toy_dir, inputs='caption', preprocess='tokenize(6)'))
  assert text.meta.task == 'classification' and text.meta.max_len == 6
  batch = text.train_batch(0)
  assert batch['inputs'].shape == batch['input_mask'].shape == (8, 6)


@pytest.mark.parametrize('keys, message', [
    ({'inputs': 'pixels'}, r"data.inputs='pixels'.*has no such feature; it has: caption str\[\], "
                           r"image uint8\[8, 8, 3\], label int64\[\]"),
    ({'targets': 'class'}, "data.targets='class'.*it has: caption"),
    ({'name': 'toy_shapez'}, "TFDS has no such dataset.*Close names: toy_shapes"),
    ({'name': 'mnistt'}, "Close names: mnist"),
    ({'preprocess': 'value_range(0, 1)|crop(4)'}, "unknown op 'crop'.*'random_crop'"),
    ({'preprocess': 'random_crop(12)'}, 'crop size 12 is larger'),
    ({'inputs': 'image', 'targets': ''}, 'must be a text feature'),
    ({'inputs': 'caption', 'targets': ''}, 'needs config.data.block_size, a positive integer'),
    ({'eval_split': 'validation'}, "eval_split='validation'.*no split 'validation'; it has: test, "
                                   "train"),
])
def test_bad_names_keys_and_ops_are_one_clear_error(toy_dir, keys, message):
  with pytest.raises(ConfigError, match=message):
    data.get_dataset(toy_config(toy_dir, **keys))


def test_an_unbuilt_dataset_without_a_manual_dir_never_reaches_for_the_network(tmp_path):
  config = toy_config(str(tmp_path), name='mnist')
  with pytest.raises(ConfigError, match='not built in data_dir.*data.download=True'):
    data.get_dataset(config)
  assert not (tmp_path / 'downloads').exists()


def test_the_experiments_own_data_goes_the_same_way(tmp_path):
  (tmp_path / 'exp.py').write_text(
      'import numpy as np\n\ndef get_data(config):\n'
      '  x = np.arange(60, dtype=np.float32).reshape(20, 3)\n'
      '  return {s: {"x": x, "y": np.arange(20) % 4} for s in ("train", "test")}\n')
  config = base_config()
  config.batch_size, config.eval_batch_size = 4, 4
  config.data.update(name='mine', get_data=str(tmp_path / 'exp.py'), inputs='x', targets='y',
                     preprocess='')
  dataset = data.get_dataset(config)
  assert dataset.meta == data.Meta(task='classification', num_classes=4, input_shape=(3,))
  config.data.inputs = 'z'
  with pytest.raises(ConfigError, match=r"inputs='z'.*it has: x float32\[3\], y int64\[\]"):
    data.get_dataset(config)
  config.data.update(inputs='x', num_classes=3)
  with pytest.raises(ConfigError, match=r'span \[0, 3\], outside the 3 classes'):
    data.get_dataset(config)


def test_a_cached_dataset_starts_without_tensorflow_and_knows_the_same_features(toy_dir):
  config = toy_config(toy_dir)
  _, from_tfds = generic.load_splits(config)  # Builds the caches, if no test did yet.
  builder = generic.tfds_build.get_builder('toy_shapes', toy_dir)
  assert generic.tfds_features(builder)['label'] == from_tfds['label']
  _, cached = generic.cached_splits('toy_shapes', ('train', 'test'), toy_dir)
  assert cached == from_tfds
  code = ('import sys; from research import data; from research.config import base_config\n'
          'c = base_config(); c.batch_size = c.eval_batch_size = 4\n'
          f'c.data.update(name="toy_shapes", data_dir={toy_dir!r}, manual_dir="")\n'
          'print(data.get_dataset(c).meta.num_classes, "tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.stdout.split() == ['3', 'False'], out.stderr[-2000:]
