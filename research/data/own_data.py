"""Your own dataset, written in the experiment file: `config.data.get_data`.

  def get_data(config):  # In experiments/my_data.py, beside get_config.
    return {'train': {'x': x_train, 'y': y_train}, 'test': {'x': x_test, 'y': y_test}}

  c.data.name = 'my_data'  # A label (logs, the resume check); not a TFDS name.
  c.data.get_data = __file__  # Or 'path/to/file.py:function'; the function is get_data.
  c.data.inputs, c.data.targets = 'x', 'y'

The function gets the config and returns {split name: data} for config.data.train_split and
eval_split, each split one of: a dict of equal-length numpy arrays; a random-access source
(`len()` and `[i]` giving a dict of arrays, as a grain data source); or an iterable of such dicts
(a generator). They are gathered into in-memory arrays, then go through the same path as a TFDS
dataset (features, preprocessing, batches). The file is loaded by its path when the data is
built, so nothing under research/ imports it and there is no import cycle.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping

import ml_collections
import numpy as np

from research.errors import ConfigError

Arrays = dict[str, np.ndarray]


def load_function(ref: str) -> Callable[[ml_collections.ConfigDict], Mapping]:
  """'FILE' or 'FILE:FUNCTION' (default get_data) -> the function; ConfigError if absent."""
  path, _, name = ref.partition(':') if not os.path.exists(ref) else (ref, '', '')
  name = name or 'get_data'
  if not os.path.isfile(path):
    raise ConfigError(f'config.data.get_data={ref!r}: no such file {path!r}.')
  module_name = '_research_own_data_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  fn = getattr(module, name, None)
  if not callable(fn):
    raise ConfigError(f'config.data.get_data={ref!r}: {path} has no function {name!r}.')
  return fn


def _stack(examples: Iterable, what: str) -> Arrays:
  rows = []
  for example in examples:
    if not isinstance(example, Mapping):
      raise ConfigError(f'{what}: each example must be a dict of arrays, got '
                        f'{type(example).__name__}.')
    rows.append(example)
  if not rows:
    raise ConfigError(f'{what} has no examples.')
  keys = list(rows[0])
  try:
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}
  except (KeyError, ValueError) as e:
    raise ConfigError(f'{what}: the examples do not share keys and shapes ({e}).') from e


def split_arrays(data, what: str) -> Arrays:
  """One split as a dict of equal-length arrays (from arrays, a source or examples)."""
  if isinstance(data, Mapping):
    arrays = {k: np.asarray(v) for k, v in data.items()}
    if not arrays or any(v.ndim == 0 for v in arrays.values()):
      raise ConfigError(f'{what} must map feature names to arrays with one row per example.')
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ConfigError(f'{what}: the arrays differ in length: {lengths}.')
    return arrays
  if hasattr(data, '__len__') and hasattr(data, '__getitem__'):  # A random-access source.
    return _stack((data[i] for i in range(len(data))), what)
  if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
    return _stack(data, what)
  raise ConfigError(f'{what} must be a dict of arrays, a random-access source or an iterable '
                    f'of example dicts, got {type(data).__name__}.')


def load(config: ml_collections.ConfigDict) -> dict[str, Arrays]:
  """{split: arrays} of the train and eval splits, from the experiment's function."""
  ref = config.data.get_data
  data = load_function(ref)(config)
  splits = (config.data.train_split, config.data.eval_split)
  if not isinstance(data, Mapping) or not all(s in data for s in splits):
    got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
    raise ConfigError(f'config.data.get_data={ref!r} must return {{split: data}} with the splits '
                      f'{list(splits)} (config.data.train_split, eval_split); got {got}.')
  return {s: split_arrays(data[s], f'get_data()[{s!r}]') for s in splits}
