"""Datasets by name: `get_dataset(config, ...)` returns a `pipeline.Dataset`."""

from __future__ import annotations

import importlib
import inspect

import ml_collections

from research.config_checks import suggest
from research.data.pipeline import Dataset
from research.errors import ConfigError

# config.data.name -> module with get_dataset(config, process_index, process_count[, workdir]).
DATASETS = {
    'mnist': 'research.data.mnist',
    'tiny_shakespeare': 'research.data.shakespeare',
    'sst2': 'research.data.sst2',
    'mnist1d': 'research.data.mnist1d',
}


def get_dataset(config: ml_collections.ConfigDict, process_index: int = 0,
                process_count: int = 1, workdir: str | None = None) -> Dataset:
  """`workdir` goes to modules whose get_dataset takes it (to save/reuse a vocabulary)."""
  name = config.data.name
  if name not in DATASETS:
    raise ConfigError(f'Unknown dataset config.data.name={name!r}; known: '
                      f'{sorted(DATASETS)}.{suggest(name, list(DATASETS))}')
  make = importlib.import_module(DATASETS[name]).get_dataset
  kwargs = {'workdir': workdir} if 'workdir' in inspect.signature(make).parameters else {}
  return make(config, process_index, process_count, **kwargs)
