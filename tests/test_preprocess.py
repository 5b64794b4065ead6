"""The preprocessing op list: parsing, exact values, and training randomness as a pure function of
(seed, step, row)."""

import numpy as np
import pytest

from research.data import preprocess
from research.errors import ConfigError


def images(n=8, size=6, channels=1):
  return np.arange(n * size * size * channels, dtype=np.uint8).reshape(n, size, size, channels)


def test_unknown_op_lists_the_ones_there_are():
  with pytest.raises(ConfigError, match=r"unknown op 'flipp'.*'flip_lr'.*Did you mean \"flip_lr\""):
    preprocess.parse('value_range(0, 1)|flipp')


def test_arguments_must_be_literals():
  with pytest.raises(ConfigError, match='literal arguments'):
    preprocess.parse('resize(size)')
  with pytest.raises(ConfigError, match='resize'):
    preprocess.apply(preprocess.parse('resize(1, 2, 3, 4)'), images(), train=False)


def test_value_range_is_the_uint8_scaling_training_always_used():
  x = images()
  got = preprocess.apply(preprocess.parse('value_range(0, 1)'), x, train=False)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, x.astype(np.float32) / 255.0)  # Bit for bit.
  got = preprocess.apply(preprocess.parse('value_range(-1, 1)'), x, train=False)
  assert got.min() >= -1 and got.max() <= 1


def test_normalize_resize_reshape_shapes():
  x = images(channels=3)
  ops = preprocess.parse('normalize((1, 2, 3), (2, 2, 2))|resize(4, 3)')
  assert preprocess.apply(ops, x, train=False).shape == (8, 4, 3, 3)
  flat = np.zeros((5, 40), np.float32)
  assert preprocess.apply(preprocess.parse('reshape(40, 1)'), flat, train=False).shape == (5, 40, 1)
  constant = np.full((2, 5, 5, 1), 7, np.uint8)  # A constant image stays constant when resized.
  np.testing.assert_allclose(preprocess.resize(constant, 3), 7)


def rand(step, rows=slice(0, 8), seed=0):
  return preprocess.Rand(seed, step, rows, 8)


def test_random_ops_are_a_function_of_seed_step_and_row():
  ops = preprocess.parse('random_crop(6, pad=2)|flip_lr')
  x = images()
  whole = preprocess.apply(ops, x, train=True, rand=rand(3))
  assert whole.shape == x.shape
  halves = [preprocess.apply(ops, x[s], train=True, rand=rand(3, s))
            for s in (slice(0, 4), slice(4, 8))]
  np.testing.assert_array_equal(np.concatenate(halves), whole)  # 2 processes = 1 process.
  np.testing.assert_array_equal(preprocess.apply(ops, x, train=True, rand=rand(3)), whole)
  assert not np.array_equal(preprocess.apply(ops, x, train=True, rand=rand(4)), whole)


def test_eval_takes_the_deterministic_form():
  x = images()
  np.testing.assert_array_equal(
      preprocess.apply(preprocess.parse('random_crop(4)|flip_lr'), x, train=False), x[:, 1:5, 1:5])
  with pytest.raises(ConfigError, match='crop size 9 is larger'):
    preprocess.apply(preprocess.parse('center_crop(9)'), x, train=False)


def test_tokenize_needs_a_max_len():
  assert preprocess.tokenize_args(preprocess.parse('tokenize(16)')) == {'max_len': 16}
  assert preprocess.tokenize_args(preprocess.parse('value_range(0, 1)')) is None
  with pytest.raises(ConfigError, match='tokenize needs max_len'):
    preprocess.tokenize_args(preprocess.parse('tokenize'))
