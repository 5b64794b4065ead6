"""Datasets by name: each module declares its `DatasetSpec` (SPEC); this maps names to them.

`get_dataset(config, ...)` builds the training data (a `pipeline.Dataset`); `get_spec(name)` is
the dataset's spec, which export, inference and sampling read (its Meta from a workdir, its
tokenizer, its input signature) without loading any data.
"""

from __future__ import annotations

import ml_collections

from research.config_checks import suggest
from research.data import mnist, mnist1d, shakespeare, sst2
from research.data.spec import Dataset, DatasetSpec, Meta
from research.errors import ConfigError

__all__ = ['DATASETS', 'Dataset', 'DatasetSpec', 'Meta', 'get_dataset', 'get_spec']

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (mnist.SPEC, shakespeare.SPEC, sst2.SPEC, mnist1d.SPEC)}


def get_spec(name: str) -> DatasetSpec:
  """The spec of config.data.name `name`; ConfigError (with a suggestion) for an unknown one."""
  if name not in DATASETS:
    raise ConfigError(f'Unknown dataset config.data.name={name!r}; known: '
                      f'{sorted(DATASETS)}.{suggest(name, list(DATASETS))}')
  return DATASETS[name]


def get_dataset(config: ml_collections.ConfigDict, process_index: int = 0,
                process_count: int = 1, workdir: str | None = None) -> Dataset:
  """`workdir`: where a dataset with a tokenizer saves it (or finds it, when resuming)."""
  return get_spec(config.data.name).get_dataset(config, process_index, process_count, workdir)
