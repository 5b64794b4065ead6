"""The generic path's classifiers streamed record by record through grain (streaming.py).

`data.source` picks the path (`choose`): in memory (generic.py) or streamed, here. A streamed
classifier reads a TFDS dataset's ArrayRecord build (`tfds.data_source`) or the random-access
sources an experiment's get_data returns (e.g. `streaming.RecordFiles(paths, decode)`); its
batches are the in-memory path's (the same sampler, the same ops, run in the workers), so the
data position stays the step. Image/array inputs with a ClassLabel (or data.num_classes) target
only: a text input's vocabulary needs the whole split, and LMs have their own readers.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from absl import logging

from research.data import generic, own_data, pipeline, preprocess, spec, streaming, tfds_build
from research.data.generic import array_features, check_keys, tfds_features
from research.data.spec import Meta
from research.errors import ConfigError


def choose(config: ml_collections.ConfigDict, process_index: int = 0) -> str:
  """'memory' or 'stream' for a generic dataset, by data.source (and the split's size on disk),
  stated in the log."""
  d = config.data
  size = None if d.get_data else streaming.tfds_split_bytes(
      d.data_dir or tfds_build.default_data_dir(), d.name, d.train_split)
  source, why = streaming.choose_source(d.source, size)
  streaming.announce(d.name, source, why, d.workers, process_index)
  return source


@dataclasses.dataclass(frozen=True)
class BatchOps:
  """The config's ops on this process's rows of a batch (picklable: grain's workers run it)."""

  ops: tuple
  seed: int
  rows: slice
  batch_size: int

  def __call__(self, batch: pipeline.Batch, train: bool, step: int = 0) -> pipeline.Batch:
    rand = preprocess.Rand(self.seed, step, self.rows, self.batch_size)
    x = preprocess.apply(self.ops, batch['inputs'], train=train, rand=rand)
    # As generic.classification: integer inputs the ops left so are cast (not scaled).
    return dict(batch, inputs=x if x.dtype.kind == 'f' else x.astype(np.float32))


def streamed_classification(config: ml_collections.ConfigDict, process_index: int,
                            process_count: int) -> tuple[spec.Dataset, list[str], str, dict]:
  """(dataset, class names, input kind, features) of a classifier read record by record through
  grain (streaming.py): the in-memory path's batches and ops, decoded in worker processes. The
  records come from a TFDS dataset, or from get_data's random-access sources (e.g.
  streaming.RecordFiles with a decode function). Image/array inputs with a ClassLabel (or
  data.num_classes) target only: a text input's vocabulary would need the whole split first."""
  d = config.data
  if not d.targets:
    raise ConfigError('config.data.source=\'stream\' reads a classification dataset (a language '
                      'model is read into memory); use data.source=\'memory\'.')
  if d.get_data:
    train, test = own_sources(config)
    features = array_features(streaming.stack([train[0]]))
    check_keys(config, features, f'get_data ({d.get_data})')
  else:
    data_dir = d.data_dir or tfds_build.default_data_dir()
    features = tfds_features(tfds_build.get_builder(d.name, data_dir))
    check_keys(config, features, f'TFDS dataset {d.name!r}')
  ops = preprocess.parse(d.preprocess)
  if features[d.inputs].text or preprocess.tokenize_args(ops):
    raise ConfigError(f'config.data.source=\'stream\': config.data.inputs={d.inputs!r} is text, '
                      'whose vocabulary needs the whole split; use data.source=\'memory\'.')
  target = features[d.targets]
  n = len(target.class_names) if target.class_names else d.num_classes
  if not n:
    raise ConfigError(f'config.data.source=\'stream\' needs the number of classes: '
                      f'{d.targets!r} is not a ClassLabel, so set config.data.num_classes.')
  if not d.get_data:
    train, test = (streaming.tfds_source(d.name, s, data_dir, d.manual_dir or None, None,
                                         d.download) for s in (d.train_split, d.eval_split))
  rows = pipeline.process_rows(config.batch_size, process_index, process_count)
  finish = BatchOps(ops, config.seed, rows, config.batch_size)
  fields = streaming.Fields(d.inputs, d.targets)
  shape = finish(streaming.stack([fields(test[0])]), False)['inputs'].shape[1:]
  train_shape = finish(streaming.stack([fields(train[0])]), True)['inputs'].shape[1:]
  if train_shape != shape:
    raise ConfigError(f'config.data.preprocess gives training inputs of shape {train_shape} but '
                      f'eval inputs of {shape}: the random ops must keep the eval shape.')
  meta = Meta(task='classification', num_classes=n, input_shape=shape)
  dataset = streaming.stream_dataset(config, train, test, fields, meta, process_index,
                                     process_count, finish)
  return dataset, list(target.class_names or map(str, range(n))), 'array', features


def own_sources(config: ml_collections.ConfigDict) -> tuple:
  """The train and eval splits get_data returns, each a random-access source of example dicts."""
  d = config.data
  data = own_data.load_function(d.get_data)(config)
  splits = (d.train_split, d.eval_split)
  if not isinstance(data, dict) or not all(s in data for s in splits) or not all(
      hasattr(data[s], '__len__') and hasattr(data[s], '__getitem__')
      and not isinstance(data[s], dict) for s in splits):
    raise ConfigError(f'config.data.get_data={d.get_data!r} with data.source=\'stream\' must '
                      f'return {{split: random-access source}} for {list(splits)} (len() and [i] '
                      'giving a dict of arrays, e.g. streaming.RecordFiles(paths, decode)).')
  return data[d.train_split], data[d.eval_split]


def get_dataset(config: ml_collections.ConfigDict, process_index: int = 0,
                process_count: int = 1, workdir: str | None = None) -> spec.Dataset:
  """The streamed dataset; its facts saved in the workdir as generic.get_dataset saves them."""
  dataset, labels, kind, features = streamed_classification(config, process_index, process_count)
  logging.info('Data %s (streamed): inputs %s -> %s, %d eval examples, %s.', config.data.name,
               config.data.inputs, config.data.targets, dataset.num_eval_examples, dataset.meta)
  if workdir and process_index == 0:
    generic.save_facts(workdir, dataset.meta, labels, kind, None,
                       features[config.data.inputs].dtype)
  return dataset
