"""MNIST from the real TFDS builder, as in-memory arrays (70k small images)."""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from research.data import pipeline, spec, tfds_build
from research.data.spec import DatasetSpec, Meta
from research.data.tokenizers import Tokenizer

MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')


def load_split(data: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
  arrays = tfds_build.load_arrays('mnist', split, data.data_dir, data.manual_dir, MNIST_FILES)
  # Kept as uint8 in memory (4x smaller); scaled to [0, 1] per batch on the host.
  return {'inputs': arrays['image'], 'targets': arrays['label'].astype(np.int32)}


def _to_float(batch: pipeline.Batch) -> pipeline.Batch:
  return dict(batch, inputs=batch['inputs'].astype(np.float32) / 255.0)


def meta(config: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None) -> Meta:
  return Meta(task='classification', num_classes=10, input_shape=(28, 28, 1))


def get_dataset(config: ml_collections.ConfigDict, process_index: int, process_count: int,
                workdir: str | None = None) -> spec.Dataset:
  train = load_split(config.data, config.data.train_split)
  test = load_split(config.data, config.data.eval_split)
  train_batch = functools.partial(pipeline.shuffled_train_batch, train, seed=config.seed,
                                  batch_size=config.batch_size, process_index=process_index,
                                  process_count=process_count)

  def eval_batches():
    yield from map(_to_float, pipeline.padded_eval_batches(
        test, batch_size=config.eval_batch_size, process_index=process_index,
        process_count=process_count))

  return spec.Dataset(
      train_batch=lambda step: _to_float(train_batch(step)),
      eval_batches=eval_batches,
      num_eval_examples=len(test['targets']),
      meta=meta(config))


SPEC = DatasetSpec('mnist', get_dataset, meta, inputs='image', labels=tuple('0123456789'),
                   preprocess='float32 pixels in [0, 1] (uint8 / 255), shape 28x28x1')
