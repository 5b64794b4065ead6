"""MNIST-1D: 40-step signals, 10 classes, 4000 train / 1000 test, in memory.

Built by the `mnist1d` TFDS builder (research/data/builders/mnist1d.py) from the canonical pickle
in the manual dir, which it unpickles only after checking the file's sha256. The signals are
already standardized (train mean 0.000, std 0.998), so they are used as they are, shaped
B x 40 x 1 (time x channels) for the patch embedding.

Why a module of its own rather than plain config (generic.py): TFDS has no `mnist1d` builder, so
ours (research/data/builders/mnist1d.py) must be imported to register it before TFDS can build
from the pickle, and nothing in a config can say "import this module first".
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from research.data import pipeline, spec, tfds_build
from research.data.spec import DatasetSpec, Meta
from research.data.tokenizers import Tokenizer

NAME = 'mnist1d'
SOURCE_FILES = ('mnist1d_data.pkl',)
INPUT_SHAPE = (40, 1)  # Time x channels (the builder's LENGTH x 1).


def load_split(data: ml_collections.ConfigDict, split: str) -> pipeline.Batch:
  # Registers the TFDS builder; here, not at the top: it imports TensorFlow (via TFDS).
  from research.data.builders import mnist1d as _  # noqa: F401

  arrays = tfds_build.load_arrays(NAME, split, data.data_dir, data.manual_dir, SOURCE_FILES)
  return {'inputs': arrays['signal'].astype(np.float32)[..., None],
          'targets': arrays['label'].astype(np.int32)}


def meta(config: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None) -> Meta:
  return Meta(task='classification', num_classes=10, input_shape=INPUT_SHAPE)


def get_dataset(config: ml_collections.ConfigDict, process_index: int, process_count: int,
                workdir: str | None = None) -> spec.Dataset:
  train = load_split(config.data, config.data.train_split)
  test = load_split(config.data, config.data.eval_split)
  return spec.Dataset(
      train_batch=functools.partial(pipeline.shuffled_train_batch, train, seed=config.seed,
                                    batch_size=config.batch_size, process_index=process_index,
                                    process_count=process_count),
      eval_batches=lambda: pipeline.padded_eval_batches(
          test, batch_size=config.eval_batch_size, process_index=process_index,
          process_count=process_count),
      num_eval_examples=len(test['targets']),
      meta=meta(config))


SPEC = DatasetSpec(NAME, get_dataset, meta, inputs='array', labels=tuple('0123456789'),
                   preprocess='the standardized 40-step float32 signals of the MNIST-1D pickle, '
                              'shape 40x1 (time x channels)')
