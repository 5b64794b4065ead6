"""Plain helpers shared by several test files (fixtures and `run_launch` live in conftest.py).

Test files import from here, never from one another, so moving a test file moves nothing else.
"""

import dataclasses
import functools
import json
import os
import socket
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

import experiments.mnist_mlp as mnist_mlp
import experiments.shakespeare_char as shakespeare_char
from research import models
from research.config import base_config
from research.data import corpus, corpus_build, generic, streaming
from research.data.spec import Meta
from research.data.tokenizers import CharVocab

LM_VOCAB = 65  # Tiny Shakespeare's characters.
# A few speeches, repeated: text a SentencePiece model trains on in a second.
SPEECHES = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n'
            'First Citizen:\nYou are all resolved rather to die than to famish?\n') * 20


def free_port() -> int:
  """A free TCP port on 127.0.0.1 for a jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def read_metrics(workdir: str) -> list[dict]:
  """WORKDIR/metrics.jsonl as a list of dicts, one per log point."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def assert_same_run(got: list[dict], want: list[dict], steps_from: int = 0) -> None:
  """The same log points after `steps_from`, with losses equal to float tolerance."""
  got = [m for m in got if m['step'] > steps_from]
  want = [m for m in want if m['step'] > steps_from]
  assert [(m['step'], m['split']) for m in got] == [(m['step'], m['split']) for m in want]
  for g, w in zip(got, want, strict=True):
    assert g['loss'] == pytest.approx(w['loss'], rel=2e-5), (g, w)


def mnist_smoke_config(data_dir: str = '/nonexistent') -> ml_collections.ConfigDict:
  """experiments/mnist_mlp.py:smoke reading DATA_DIR (by default one that does not exist, for
  tests that must fail before any data is read)."""
  config = mnist_mlp.get_config('smoke')
  config.data.data_dir = data_dir
  return config


def ensure_mnist(data_dir: str) -> None:
  """Builds/caches MNIST once in this process, so concurrent runs only read it."""
  generic.load_splits(mnist_smoke_config(data_dir))


def ensure_mnist_streamed(data_dir: str) -> None:
  """Builds MNIST in ArrayRecord format for streaming (data_dir/array_record) once, here."""
  data = mnist_smoke_config(data_dir).data
  for split in ('train', 'test'):
    streaming.tfds_source('mnist', split, data_dir, data.manual_dir)


def wait_for_metrics(path: str, timeout: float = 120) -> None:
  """Returns once PATH exists and is not empty (a run started logging); TimeoutError after."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.exists(path) and os.path.getsize(path) > 0:
      return
    time.sleep(0.05)
  raise TimeoutError(path)


def small_mlp_config(steps: int = 10) -> ml_collections.ConfigDict:
  """base_config() with a one-layer MLP of width 8, no dropout: what sweep tests expand."""
  c = base_config()
  c.num_train_steps = steps
  c.model.widths = (8,)
  c.model.dropout_rate = 0.0
  return c


def tiny_lm_config(data_dir: str | None = None, **model) -> ml_collections.ConfigDict:
  """experiments/shakespeare_char.py:tiny, with MODEL's keys set on config.model."""
  config = shakespeare_char.get_config('tiny')
  if data_dir:
    config.data.data_dir = data_dir
  config.model.update(model)
  return config


def init_lm_params(model: nn.Module, length: int, seed: int = 0) -> dict:
  tokens = jnp.zeros((1, length), jnp.int32)
  init = jax.jit(lambda: nn.unbox(model.init(jax.random.key(seed), tokens, train=False)['params']))
  return init()


# Plain multi-head attention with learned positions, and grouped-query attention (2 query heads
# per KV head) with rotary positions, scanned and rematerialized layers. A wide init spreads the
# logits, so greedy choices in the cache test are not float-noise ties.
LM_VARIANTS = {
    'mha_learned': {},
    'gqa_rotary_scan': {'positions': 'rotary', 'num_heads': 4, 'num_kv_heads': 2,
                        'scan_layers': True, 'remat': 'full'},
}


@functools.cache
def lm_and_params(variant: str) -> tuple[nn.Module, dict]:
  """The LM_VARIANTS[variant] model (max_len 16) and its initial params, built once."""
  config = tiny_lm_config(max_len=16, init_std=0.5, **LM_VARIANTS[variant])
  model = models.get_model(config.model, Meta(task='lm', vocab_size=LM_VOCAB, block_size=16))
  return model, init_lm_params(model, 16)


def store_toy_tfds(data_dir: str, name: str = 'toy_shapes', file_format: str | None = None) -> None:
  """A brand-new TFDS dataset no module of research/ knows, stored in DATA_DIR as any user's
  would be (tfds.dataset_builders.store_as_tfds_dataset): 8x8x3 uint8 images whose class (one of
  3) is which third of the image is bright, and a text feature; train 48, test 12 examples."""
  import numpy as np
  import tensorflow_datasets as tfds

  def examples(n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      label = i % 3
      image = rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)
      image[:, label * 3:label * 3 + 2] += 180
      text = ['one fish', 'two fish', 'red fish blue fish'][label]
      yield i, {'image': image, 'label': label, 'caption': text}

  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version='1.0.0', data_dir=data_dir,
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(8, 8, 3)),
          'label': tfds.features.ClassLabel(names=['left', 'middle', 'right']),
          'caption': tfds.features.Text()}),
      split_datasets={'train': list(examples(48, 0)), 'test': list(examples(12, 1))},
      file_format=file_format)
def record_features(i: int) -> np.ndarray:
  """Record i of write_record_shards: its id, then 5 features (int16)."""
  return np.array([i, i * 3, -i, 7, i % 5, 100 - i], np.int16)


def decode_record(record: bytes) -> dict[str, np.ndarray]:
  """A record of write_record_shards as an example (module-level: grain workers import it)."""
  values = np.frombuffer(record, np.int16)
  return {'inputs': values[1:].astype(np.float32), 'targets': np.int32(values[0])}


def write_record_shards(directory, sizes=(20, 33)) -> list[str]:
  """ArrayRecord shards of record_features(0), (1), ... as a user would write them."""
  paths, start = [], 0
  for k, size in enumerate(sizes):
    path = str(directory / f'data-{k:05d}-of-{len(sizes):05d}.array_record')
    writer = ArrayRecordWriter(path, 'group_size:1')
    for i in range(start, start + size):
      writer.write(record_features(i).tobytes())
    writer.close()
    paths.append(path)
    start += size
  return paths


# --- Token corpora (research/data/corpus_build.py, corpus.py) --------------------------------

# Documents separated by blank lines; the second file has non-ASCII characters (2- and 3-byte).
CORPUS_TEXTS = {'a.txt': 'First doc.\nTwo lines.\n\nSecond doc\n\n\nThird, after a triple newline.',
                'b.txt': 'Über den Fluß.\n\nEnd — fin.\n\n'}


@dataclasses.dataclass(frozen=True)
class WrappedVocab:
  """Any tokenizer that is not a CharVocab: the per-document path (a CharVocab inside)."""

  inner: CharVocab
  KIND = 'char'

  @property
  def vocab_size(self):
    return self.inner.vocab_size

  def encode(self, text, what='text'):
    return self.inner.encode(text, what)

  def decode(self, ids):
    return self.inner.decode(ids)

  def save(self, path):
    self.inner.save(path)


def write_texts(folder, texts=CORPUS_TEXTS):
  paths = []
  for name, text in texts.items():
    paths.append(str(folder / name))
    with open(paths[-1], 'w', encoding='utf-8') as f:
      f.write(text)
  return paths


def build_corpus(tmp_path, tokenizer=None, shard_tokens=20, eval_fraction=0.0, paths=None,
                 separator='\n\n'):
  """(the opened corpus, its tokenizer) of CORPUS_TEXTS (or `paths`) built under tmp_path/cache;
  eval_fraction 0: the last file is also the eval split."""
  paths = paths or write_texts(tmp_path)
  tokenizer = tokenizer or corpus_build.char_vocab(paths)
  sources = {'train': paths, 'eval': paths[-1:] if not eval_fraction else []}
  folder = corpus_build.build(str(tmp_path / 'cache'), sources, tokenizer, separator,
                              eval_fraction, shard_tokens)
  return corpus.open_corpus(folder), tokenizer


def sweep_experiment(width: int, sweep_import: str, get_sweep: str) -> str:
  """An experiment file's text: MNIST `:smoke` for 8 steps (log, eval and checkpoint every 4) with
  one hidden layer of `width`, `from research.tools.sweep import SWEEP_IMPORT` and the body of
  its get_sweep()."""
  return textwrap.dedent(f'''
      from experiments.mnist_mlp import get_config as mnist_config
      from research.tools.sweep import {sweep_import}

      def get_config():
        c = mnist_config('smoke')
        c.num_train_steps, c.log_every_steps = 8, 4
        c.eval_every_steps = c.checkpoint_every_steps = 4
        c.optimizer.warmup_steps = 0
        c.model.widths = ({width},)
        return c

      def get_sweep():
  ''') + textwrap.indent(textwrap.dedent(get_sweep).strip(), '  ') + '\n'
