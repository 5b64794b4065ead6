"""Datasets by config: the shipped modules that need code of their own, else the generic path.

`config.data.name` names tiny_shakespeare, sst2 or mnist1d (each module declares its
`DatasetSpec`, SPEC, and says why it needs its own code), or any other dataset: a TFDS name, or
the experiment's own `get_data` (generic.py; MNIST goes that way, as plain config).
`get_dataset(config, ...)` builds the training data (a `pipeline.Dataset`); `get_spec(config)`
is the dataset's spec, which export, inference and sampling read (its Meta from a workdir, its
tokenizer, its input signature) without loading any data.
"""

from __future__ import annotations

import ml_collections

from research.config import base_config
from research.data import generic, generic_stream, lm_corpus, mnist1d, shakespeare, sst2
from research.data.spec import Dataset, DatasetSpec, Meta
from research.errors import ConfigError

__all__ = ['DATASETS', 'Dataset', 'DatasetSpec', 'Meta', 'get_dataset', 'get_spec']

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (shakespeare.SPEC, sst2.SPEC, mnist1d.SPEC, lm_corpus.SPEC)}
IN_MEMORY = (shakespeare.SPEC, sst2.SPEC, mnist1d.SPEC)  # Modules that read the data into RAM.


def get_spec(config: ml_collections.ConfigDict | str,
             directory: str | None = None) -> DatasetSpec:
  """The spec of `config` (a run's config, or a dataset name with base_config's other data
  keys). `directory`: a trained workdir or export, whose saved facts a generic dataset reads."""
  if isinstance(config, str):
    name, config = config, base_config()
    config.data.name = name
  if config.data.name in DATASETS and not config.data.get('get_data'):
    return DATASETS[config.data.name]
  return generic.make_spec(config, directory)


def get_dataset(config: ml_collections.ConfigDict, process_index: int = 0,
                process_count: int = 1, workdir: str | None = None) -> Dataset:
  """`workdir`: where a dataset with a tokenizer saves it (or finds it, when resuming)."""
  spec = get_spec(config)
  if spec in IN_MEMORY and config.data.get('source') == 'stream':
    raise ConfigError(f"config.data.source='stream': data.name={spec.name!r} has a module of its "
                      "own that reads it into memory; streaming is the generic path's "
                      "(set data.source='memory' or 'auto').")
  if (isinstance(spec, generic.GenericSpec)
      and generic_stream.choose(config, process_index) == 'stream'):
    return generic_stream.get_dataset(config, process_index, process_count, workdir)
  return spec.get_dataset(config, process_index, process_count, workdir)
