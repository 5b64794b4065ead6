"""Datasets by name: `get_dataset(config, ...)` returns a `pipeline.Dataset`."""

from __future__ import annotations

import importlib

import ml_collections

from research.config_checks import ConfigError, suggest
from research.data.pipeline import Dataset

# config.data.name -> module with get_dataset(config, process_index, process_count).
DATASETS = {
    'mnist': 'research.data.mnist',
}


def get_dataset(config: ml_collections.ConfigDict, process_index: int = 0,
                process_count: int = 1) -> Dataset:
  name = config.data.name
  if name not in DATASETS:
    raise ConfigError(f'Unknown dataset config.data.name={name!r}; known: '
                      f'{sorted(DATASETS)}.{suggest(name, list(DATASETS))}')
  return importlib.import_module(DATASETS[name]).get_dataset(config, process_index, process_count)
