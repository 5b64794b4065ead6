"""What the code knows about a dataset, declared once: its `DatasetSpec` (in its own module).

`Meta` is what a model (and the tools) may know about the data: the task and the sizes that shape
the model. It is plain, frozen and JSON-able (an export's manifest carries it). A `DatasetSpec`
says how to build the dataset for training, how to read its `Meta` back from a trained workdir
without loading any data (export, sampling), which tokenizer it saves there, and what a caller
must feed the trained model (the input signature and the preprocessing it implies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Literal

import ml_collections
import numpy as np

from research import paths
from research.data import tokenizers
from research.data.tokenizers import Tokenizer

Batch = dict[str, np.ndarray]
TASKS = ('classification', 'lm', 'mlm')
Task = Literal['classification', 'lm', 'mlm']
# What a caller feeds the model: 'image' (float32 pixels in [0, 1]; uint8 pixels are scaled),
# 'array' (float32 as is), 'tokens' (ids, any length up to the model's max_len), 'text' (ids and
# a 0/1 input_mask, up to meta.max_len).
INPUTS = ('image', 'array', 'tokens', 'text')
InputKind = Literal['image', 'array', 'tokens', 'text']
Signature = dict[str, tuple[str, str]]  # Model input name -> (dims for symbolic_shape, dtype).
ANY_TOKENIZER = 'any'  # DatasetSpec.tokenizer of a dataset whose config picks the kind.


@dataclasses.dataclass(frozen=True)
class Meta:
  """The facts about a dataset that shape its model; None where a task has no such fact."""

  task: Task
  num_classes: int | None = None  # Classification.
  vocab_size: int | None = None  # Token inputs (and the LM / masked-LM outputs).
  input_shape: tuple[int, ...] | None = None  # Array inputs: one example's shape.
  block_size: int | None = None  # LM: the training window.
  max_len: int | None = None  # Token classifiers and masked LMs: the longest sequence.

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f'Meta.task={self.task!r} is not one of {TASKS}.')
    if self.input_shape is not None:  # A JSON list (a manifest) or an array's shape.
      object.__setattr__(self, 'input_shape', tuple(int(d) for d in self.input_shape))

  def to_json(self) -> dict:
    """The facts that are set (an export's manifest['model']['meta'])."""
    out = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is not None:
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out

  @classmethod
  def from_json(cls, data: dict) -> Meta:
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What the train loop needs from any dataset."""

  train_batch: Callable[[int], Batch]  # step -> this process's rows of the global train batch
  eval_batches: Callable[[], Iterator[Batch]]  # the whole eval split, padded, with a 0/1 'mask'
  num_eval_examples: int
  meta: Meta  # What shapes the model: task, num_classes, vocab_size, input shape, ...
  # step -> this process's rows of a train batch of the largest shape any step can have (e.g. the
  # widest length bucket), for sizing memory and timing at one stated shape; None when every
  # step's batch has the same shape.
  widest_train_batch: Callable[[int], Batch] | None = None
  tokenizer: Tokenizer | None = None  # Text datasets: the one saved as WORKDIR/vocab.json.

  def largest_train_batch(self, step: int = 0) -> Batch:
    """A train batch of the largest shape training can see (what memory must be sized for)."""
    return (self.widest_train_batch or self.train_batch)(step)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset: build it, read its meta back, and what its trained model takes.

  get_dataset(config, process_index, process_count, workdir): the training data (the workdir is
  where the tokenizer is saved or reused). meta(config, tokenizer): its Meta from the config and
  the tokenizer alone (no data read), the same function get_dataset uses. tokenizer: the kind saved
  as WORKDIR/vocab.json (tokenizers.KINDS), ANY_TOKENIZER (whatever kind the file says), or None.
  """

  name: str
  get_dataset: Callable[[ml_collections.ConfigDict, int, int, str | None], Dataset]
  meta: Callable[[ml_collections.ConfigDict, Tokenizer | None], Meta]
  inputs: InputKind
  preprocess: str  # For people: how raw data becomes the model's inputs (the manifest says it).
  labels: tuple[str, ...] = ()  # Class names, in class-id order.
  tokenizer: str | None = None

  def __post_init__(self):
    if self.inputs not in INPUTS:
      raise ValueError(f'DatasetSpec.inputs={self.inputs!r} is not one of {INPUTS}.')
    if self.tokenizer not in (None, ANY_TOKENIZER, *tokenizers.KINDS):
      raise ValueError(f'DatasetSpec.tokenizer={self.tokenizer!r} is not one of '
                       f'{sorted(tokenizers.KINDS)}.')

  @property
  def assets(self) -> tuple[str, ...]:
    """Workdir files a trained model needs beside its params (copied into an export)."""
    return (tokenizers.FILE,) if self.tokenizer else ()

  def load_tokenizer(self, directory: str) -> Tokenizer | None:
    """The tokenizer saved in a workdir or export folder (ConfigError if it is missing)."""
    if self.tokenizer is None:
      return None
    kind = None if self.tokenizer == ANY_TOKENIZER else self.tokenizer
    return tokenizers.load_tokenizer(paths.join(directory, tokenizers.FILE), kind)

  def read_meta(self, config: ml_collections.ConfigDict, workdir: str) -> Meta:
    """The Meta a trained run's model was built with, from its config and saved tokenizer."""
    return self.meta(config, self.load_tokenizer(workdir))

  def signature(self, meta: Meta,
                max_len: int | None = None) -> tuple[Signature, tuple[str, ...]]:
    """({model input name: (dims, dtype)}, constraints on the symbolic dims), dims written for
    `jax.export.symbolic_shape` with `b` the batch and `l` a sequence length. `max_len`: the
    model's position table, the longest sequence it takes ('tokens' inputs need it)."""
    if self.inputs in ('image', 'array'):
      return {'inputs': (f'b, {", ".join(map(str, meta.input_shape))}', 'float32')}, ()
    if self.inputs == 'tokens':
      if max_len is None:
        raise ValueError(f'{self.name}: token inputs need the model\'s max_len.')
      return {'inputs': ('b, l', 'int32')}, (f'l <= {max_len}',)
    return ({'inputs': ('b, l', 'int32'), 'input_mask': ('b, l', 'int32')},
            (f'l <= {meta.max_len}',))

  def encode_texts(self, tokenizer: Tokenizer, texts: list[str],
                   max_len: int) -> dict[str, np.ndarray]:
    """'text' inputs: each text's ids right-padded with 0 ([PAD]) to max_len, longer texts cut
    there, and the 0/1 input_mask of the ids kept."""
    ids = np.zeros((len(texts), max_len), np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
      row = tokenizer.encode(text)[:max_len]
      ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return {'inputs': ids, 'input_mask': mask}

  def prepare(self, inputs: np.ndarray) -> np.ndarray:
    """Raw arrays as training fed them: uint8 pixels scaled to [0, 1] (as stored on disk)."""
    inputs = np.asarray(inputs)
    if self.inputs == 'image' and inputs.dtype == np.uint8:
      return inputs.astype(np.float32) / 255.0
    return inputs
