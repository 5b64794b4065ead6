"""The experiment's own data (config.data.get_data): the forms a function may return, and the
one-line errors for what it may not."""

import ml_collections
import numpy as np
import pytest

from research.config import base_config
from research.data import own_data
from research.errors import ConfigError


def config_for(tmp_path, body: str, ref_suffix: str = '') -> ml_collections.ConfigDict:
  path = tmp_path / 'exp.py'
  path.write_text('import numpy as np\n\n' + body)
  c = base_config()
  c.data.get_data = str(path) + ref_suffix
  return c


ARRAYS = "{'x': np.zeros((4, 3)), 'y': np.arange(4)}"


@pytest.mark.parametrize('split', [
    ARRAYS,
    "[{'x': np.zeros(3), 'y': i} for i in range(4)]",  # A list of examples.
    "(dict(x=np.zeros(3), y=i) for i in range(4))",  # A generator.
])
def test_arrays_examples_and_generators_become_arrays(tmp_path, split):
  body = f'def get_data(config):\n  return {{"train": {split}, "test": {split}}}\n'
  c = config_for(tmp_path, body)
  got = own_data.load(c)
  assert sorted(got) == ['test', 'train']
  assert got['train']['x'].shape == (4, 3)
  np.testing.assert_array_equal(got['train']['y'], np.arange(4))


def test_a_random_access_source_and_a_named_function(tmp_path):
  body = ('class Source:\n  def __len__(self): return 5\n'
          '  def __getitem__(self, i): return {"x": np.full(2, i), "y": i % 2}\n\n'
          'def my_data(config):\n  return {"train": Source(), "test": Source()}\n')
  got = own_data.load(config_for(tmp_path, body, ':my_data'))
  np.testing.assert_array_equal(got['test']['x'][:, 0], np.arange(5))


@pytest.mark.parametrize('body, message', [
    ('def get_data(config):\n  return [1, 2]\n', r"must return \{split: data\}.*got list"),
    (f'def get_data(config):\n  return {{"train": {ARRAYS}}}\n',
     r"splits \['train', 'test'\].*got \['train'\]"),
    ('def get_data(config):\n  return {"train": 3, "test": 3}\n', 'must be a dict of arrays'),
    ('def get_data(config):\n  return {"train": {"x": np.zeros(3), "y": np.zeros(2)}, '
     '"test": {"x": np.zeros(3)}}\n', 'differ in length'),
    ('def get_data(config):\n  return {"train": [], "test": []}\n', 'has no examples'),
    ('def other(config):\n  return {}\n', "has no function 'get_data'"),
])
def test_a_get_data_that_returns_the_wrong_thing_is_one_clear_error(tmp_path, body, message):
  with pytest.raises(ConfigError, match=message):
    own_data.load(config_for(tmp_path, body))


def test_a_missing_file(tmp_path):
  c = base_config()
  c.data.get_data = str(tmp_path / 'nope.py')
  with pytest.raises(ConfigError, match='no such file'):
    own_data.load(c)
