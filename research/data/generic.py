"""Any dataset by config: a TFDS name, or the experiment's own `get_data` (own_data.py).

  c.data.name = 'cifar10'            # Any TFDS dataset, optionally 'name:version' or 'name/config'.
  c.data.inputs = 'image'            # The feature the model reads.
  c.data.targets = 'label'           # The class label ('' = a language model over `inputs` text).
  c.data.preprocess = 'value_range(0, 1)|random_crop(32, pad=4)|flip_lr'  # preprocess.py

Each split is read into memory once (tfds_build.load_arrays, cached as .npz beside the TFDS
files), kept in its stored dtype, and batched as a pure function of (seed, step) by pipeline.py;
the op list runs per batch. What shapes the model comes from the data, not from code: the number
of classes from the target's ClassLabel (own data: data.num_classes, or the largest label + 1),
the input shape from the inputs after the eval ops, the vocabulary from the tokenizer. Training
saves these facts (and the class names) as WORKDIR/dataset.json, which export and inference read
back without any data. An LM over a text feature joins the split's texts and reuses the windows of
shakespeare.py; a text feature with `tokenize(max_len)` is a text classifier.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import ml_collections
import numpy as np
from absl import logging

from research import paths
from research.data import (
  own_data,
  pipeline,
  preprocess,
  shakespeare,
  spec,
  tfds_build,
)
from research.data.spec import DatasetSpec, Meta
from research.data.tokenizers import (
  CharVocab,
  SentencePiece,
  Tokenizer,
  WordVocab,
  get_tokenizer,
  hf_tokenizer,
)
from research.errors import ConfigError

FACTS_FILE = 'dataset.json'  # In the workdir (and an export): meta, class names, input kind.


@dataclasses.dataclass(frozen=True)
class Feature:
  """What the data says of one feature, before any data is decoded where possible."""

  shape: tuple  # One example's (None for a varying dim).
  dtype: str
  class_names: tuple[str, ...] | None = None  # A TFDS ClassLabel.
  text: bool = False


def tfds_features(builder) -> dict[str, Feature]:
  import tensorflow_datasets as tfds  # Lazily: it pulls in TensorFlow.

  out = {}
  for key, feature in builder.info.features.items():
    names = (tuple(feature.names) if isinstance(feature, tfds.features.ClassLabel) else None)
    text = isinstance(feature, tfds.features.Text)
    out[key] = Feature(tuple(feature.shape) if hasattr(feature, 'shape') else (),
                       str(np.dtype(feature.np_dtype)) if not text else 'str', names, text)
  return out


def array_features(arrays: dict[str, np.ndarray],
                   class_names: dict[str, tuple[str, ...]] | None = None) -> dict[str, Feature]:
  out = {}
  for k, v in arrays.items():
    text = v.dtype.kind in 'SUO'
    out[k] = Feature(v.shape[1:], 'str' if text else str(v.dtype),
                     (class_names or {}).get(k), text)
  return out


def cached_class_names(data_path: str) -> dict[str, tuple[str, ...]]:
  """{feature: class names} of the ClassLabels in TFDS's features.json (names from
  <feature>.labels.txt when TFDS wrote one, else '0', '1', ...)."""
  features = json.loads(paths.read_text(paths.join(data_path, 'features.json')))
  features = features.get('featuresDict', {}).get('features', {})
  out = {}
  for key, feature in features.items():
    if 'classLabel' in feature:
      names_file = paths.join(data_path, f'{key}.labels.txt')
      if paths.exists(names_file):
        lines = paths.read_text(names_file).splitlines()
        out[key] = tuple(line for line in lines if line.strip())
      else:
        out[key] = tuple(map(str, range(int(feature['classLabel']['numClasses']))))
  return out


def cached_splits(name: str, splits: tuple[str, ...],
                  data_dir: str) -> tuple[dict, dict[str, Feature]] | None:
  """The splits and features from the .npz caches and TFDS's features.json alone, so a dataset
  read before starts without importing TensorFlow; None when anything is not cached."""
  path = tfds_build.prepared_path(name, data_dir)
  if path is None or not paths.exists(paths.join(path, 'features.json')):
    return None
  arrays = {s: tfds_build.read_cache(name, s, data_dir) for s in splits}
  if any(a is None for a in arrays.values()):
    return None
  return arrays, array_features(arrays[splits[0]], cached_class_names(path))


def check_keys(config: ml_collections.ConfigDict, features: dict[str, Feature],
               where: str) -> None:
  """ConfigError naming the features there are, for an inputs/targets key the data lacks."""
  for key in ('inputs', 'targets'):
    value = config.data[key]
    if (value or key == 'inputs') and value not in features:
      have = ', '.join(f'{k} {f.dtype}{list(f.shape)}' for k, f in sorted(features.items()))
      raise ConfigError(f'config.data.{key}={value!r}: {where} has no such feature; it has: '
                        f'{have}.')


def check_splits(config: ml_collections.ConfigDict, have: list[str], name: str) -> None:
  """ConfigError naming the splits there are, for a train/eval split (or slice of one, e.g.
  'train[:90%]', or sum, 'train+test') the dataset lacks."""
  for key in ('train_split', 'eval_split'):
    for part in config.data[key].split('+'):
      if part.split('[')[0].strip() not in have:
        raise ConfigError(f'config.data.{key}={config.data[key]!r}: TFDS dataset {name!r} has '
                          f'no split {part.split("[")[0].strip()!r}; it has: '
                          f'{", ".join(sorted(have))}.')


def load_splits(config: ml_collections.ConfigDict) -> tuple[dict, dict[str, Feature]]:
  """({split: arrays}, features) of the train and eval splits, checked against the config."""
  d = config.data
  splits = (d.train_split, d.eval_split)
  if d.get_data:
    arrays = own_data.load(config)
    features = array_features(arrays[d.train_split])
    check_keys(config, features, f'get_data ({d.get_data})')
    return arrays, features
  data_dir = d.data_dir or tfds_build.default_data_dir()
  cached = cached_splits(d.name, splits, data_dir)
  if cached:
    check_keys(config, cached[1], f'TFDS dataset {d.name!r}')
    return cached
  # The features are known before anything is built or decoded: a wrong key fails in seconds.
  builder = tfds_build.get_builder(d.name, data_dir)
  features = tfds_features(builder)
  check_keys(config, features, f'TFDS dataset {d.name!r}')
  with tfds_build.build_lock(data_dir, d.name):  # Built once when several processes start.
    builder = tfds_build.build(d.name, data_dir, d.manual_dir, None, d.download)
  check_splits(config, list(builder.info.splits), d.name)
  arrays = {s: tfds_build.load_arrays(d.name, s, data_dir, d.manual_dir, None, d.download)
            for s in splits}
  return arrays, features


def text_of(values: np.ndarray) -> list[str]:
  return [bytes(v).decode('utf-8') if isinstance(v, bytes | np.bytes_) else str(v)
          for v in values]


def num_classes(config: ml_collections.ConfigDict, feature: Feature,
                targets: list[np.ndarray]) -> int:
  if feature.class_names:
    return len(feature.class_names)
  if config.data.num_classes:
    return config.data.num_classes
  return int(max(t.max() for t in targets)) + 1


def check_targets(targets: np.ndarray, n: int, split: str) -> np.ndarray:
  if targets.dtype.kind not in 'iub' or targets.ndim != 1:
    raise ConfigError(f'config.data.targets: the {split} targets must be integer class ids, one '
                      f'per example; got {targets.dtype} of shape {targets.shape}.')
  if len(targets) and (targets.min() < 0 or targets.max() >= n):
    raise ConfigError(f'config.data.targets: the {split} targets span [{targets.min()}, '
                      f'{targets.max()}], outside the {n} classes (data.num_classes).')
  return targets.astype(np.int32)


def get_vocab(config: ml_collections.ConfigDict, texts: list[str], workdir: str | None,
              process_index: int, kind: str) -> Tokenizer:
  """The workdir's saved tokenizer, else an `init_from=hf:PATH` checkpoint's tokenizer.json, else
  config.data.tokenizer's (tokenizers.get_tokenizer), by default characters (LM) or words
  (classifier, data.vocab_min_count, default 1) of the train text; a new one is saved in the
  workdir by process 0."""
  def build(chosen: str) -> Tokenizer:
    if chosen == SentencePiece.KIND:
      return SentencePiece.train(texts, config.data.vocab_size)
    if chosen == CharVocab.KIND:
      return CharVocab.from_text('\n'.join(texts))
    return WordVocab.from_texts(texts, config.data.get('vocab_min_count', 1))

  return get_tokenizer(config.data.get('tokenizer', ''), kind, build, workdir=workdir,
                       process_index=process_index,
                       fallback=hf_tokenizer(config.get('init_from', '')))


def _float(x: np.ndarray) -> np.ndarray:
  """The model takes float32 arrays: integer inputs left so by the ops are cast (not scaled)."""
  return x if x.dtype.kind == 'f' else x.astype(np.float32)


def classification(config: ml_collections.ConfigDict, arrays: dict, features: dict[str, Feature],
                   process_index: int, process_count: int,
                   workdir: str | None) -> tuple[spec.Dataset, list[str], str]:
  """(dataset, class names, input kind) of a classifier; the ops run per batch."""
  d = config.data
  ops = preprocess.parse(d.preprocess)
  target = features[d.targets]
  n = num_classes(config, target, [arrays[s][d.targets] for s in (d.train_split, d.eval_split)])
  labels = list(target.class_names or map(str, range(n)))
  tok = preprocess.tokenize_args(ops)
  train, test = ({'inputs': arrays[s][d.inputs], 'targets': check_targets(arrays[s][d.targets], n,
                                                                           s)}
                 for s in (d.train_split, d.eval_split))
  tokenizer = None
  if tok:  # A text classifier: ids and input_mask, right-padded to max_len.
    texts = {s: text_of(a['inputs']) for s, a in (('train', train), ('test', test))}
    tokenizer = get_vocab(config, texts['train'], workdir, process_index, WordVocab.KIND)
    for name, a in (('train', train), ('test', test)):
      a['inputs'], a['input_mask'], _ = tokenizer.encode_batch(texts[name], tok['max_len'])
  rows = pipeline.process_rows(config.batch_size, process_index, process_count)

  def prepare(batch: pipeline.Batch, train: bool, step: int = 0) -> pipeline.Batch:
    if tok:
      return batch
    rand = preprocess.Rand(config.seed, step, rows, config.batch_size)
    return dict(batch, inputs=_float(preprocess.apply(ops, batch['inputs'], train=train,
                                                      rand=rand)))

  def train_batch(step: int) -> pipeline.Batch:
    return prepare(pipeline.shuffled_train_batch(
        train, step, seed=config.seed, batch_size=config.batch_size,
        process_index=process_index, process_count=process_count), True, step)

  def eval_batches():
    for batch in pipeline.padded_eval_batches(test, batch_size=config.eval_batch_size,
                                              process_index=process_index,
                                              process_count=process_count):
      yield prepare(batch, False)

  shape = prepare({'inputs': test['inputs'][:1]}, False)['inputs'].shape[1:]
  train_shape = train_batch(0)['inputs'].shape[1:]
  if train_shape != shape:
    raise ConfigError(f'config.data.preprocess gives training inputs of shape {train_shape} but '
                      f'eval inputs of {shape}: the random ops must keep the eval shape.')
  if tok:
    meta = Meta(task='classification', num_classes=n, vocab_size=tokenizer.vocab_size,
                max_len=tok['max_len'])
  else:
    meta = Meta(task='classification', num_classes=n, input_shape=shape)
  dataset = spec.Dataset(train_batch=train_batch, eval_batches=eval_batches,
                         num_eval_examples=len(test['targets']), meta=meta, tokenizer=tokenizer)
  return dataset, labels, 'text' if tok else 'array'


def language_model(config: ml_collections.ConfigDict, arrays: dict, features: dict[str, Feature],
                   process_index: int, process_count: int,
                   workdir: str | None) -> tuple[spec.Dataset, list[str], str]:
  """A character LM over the `inputs` text feature: each split's texts joined by newlines, then
  shakespeare.py's random training windows and its every-target-once eval windows."""
  d = config.data
  if not features[d.inputs].text:
    raise ConfigError(f'config.data.targets is empty (a language model), so config.data.inputs='
                      f'{d.inputs!r} must be a text feature; it is {features[d.inputs].dtype}.')
  block_size = d.block_size
  if not isinstance(block_size, int) or block_size <= 0:
    raise ConfigError('A language model (config.data.targets=\'\') needs config.data.block_size, '
                      f'a positive integer (the training window), got {block_size!r}.')
  texts = {s: '\n'.join(text_of(arrays[s][d.inputs])) for s in (d.train_split, d.eval_split)}
  vocab = get_vocab(config, [texts[d.train_split]], workdir, process_index, CharVocab.KIND)
  train_ids = vocab.encode(texts[d.train_split], f'{d.train_split} split')
  windows = shakespeare.eval_windows(vocab.encode(texts[d.eval_split], f'{d.eval_split} split'),
                                     block_size)
  if len(train_ids) <= block_size:
    raise ConfigError(f'config.data.block_size={block_size} is not shorter than the train '
                      f'split ({len(train_ids)} tokens).')
  train_batch = functools.partial(shakespeare.train_windows, train_ids, seed=config.seed,
                                  batch_size=config.batch_size, block_size=block_size,
                                  process_index=process_index, process_count=process_count)
  dataset = spec.Dataset(
      train_batch=train_batch,
      eval_batches=lambda: pipeline.padded_eval_batches(
          windows, batch_size=config.eval_batch_size, process_index=process_index,
          process_count=process_count),
      num_eval_examples=len(windows['inputs']),
      meta=Meta(task='lm', vocab_size=vocab.vocab_size, block_size=block_size),
      tokenizer=vocab)
  return dataset, [], 'tokens'


def get_dataset(config: ml_collections.ConfigDict, process_index: int = 0,
                process_count: int = 1, workdir: str | None = None) -> spec.Dataset:
  arrays, features = load_splits(config)
  build = classification if config.data.targets else language_model
  dataset, labels, kind = build(config, arrays, features, process_index, process_count, workdir)
  logging.info('Data %s: %s, %d eval examples, %s.', config.data.name,
               'inputs ' + config.data.inputs + (' -> ' + config.data.targets
                                                 if config.data.targets else ' (LM)'),
               dataset.num_eval_examples, dataset.meta)
  if workdir and process_index == 0:
    save_facts(workdir, dataset.meta, labels, kind, dataset.tokenizer,
               features[config.data.inputs].dtype)
  return dataset


def save_facts(workdir: str, meta: Meta, labels: list[str], kind: str,
               tokenizer: Tokenizer | None, stored_dtype: str) -> None:
  paths.makedirs(workdir)
  facts = {'meta': meta.to_json(), 'labels': labels, 'inputs': kind, 'stored_dtype': stored_dtype,
           'tokenizer': tokenizer.KIND if tokenizer else None}
  paths.write_text(paths.join(workdir, FACTS_FILE), json.dumps(facts, indent=2))


def read_facts(directory: str) -> dict:
  path = paths.join(directory, FACTS_FILE)
  if not paths.exists(path):
    raise ConfigError(f'{path} is missing: the data facts are saved by training '
                      '(--workdir must be the trained run, or its export).')
  return json.loads(paths.read_text(path))


@dataclasses.dataclass(frozen=True)
class GenericSpec(DatasetSpec):
  """A config-named dataset: its Meta and class names are read back from WORKDIR/dataset.json;
  raw inputs are prepared for inference with the config's eval ops."""

  ops: str = ''
  stored_dtype: str = ''  # The input feature's dtype on disk ('' = unknown).

  @property
  def assets(self) -> tuple[str, ...]:
    return (FACTS_FILE, *super().assets)

  def read_meta(self, config: ml_collections.ConfigDict, workdir: str) -> Meta:
    return Meta.from_json(read_facts(workdir)['meta'])

  def prepare(self, inputs: np.ndarray) -> np.ndarray:
    """Raw inputs as stored (e.g. uint8 pixels) through the eval ops; inputs already of
    another dtype (prepared floats) as they are."""
    inputs = np.asarray(inputs)
    if self.stored_dtype and inputs.dtype != np.dtype(self.stored_dtype):
      return inputs
    return _float(preprocess.apply(preprocess.parse(self.ops), inputs, train=False))


def meta_from_config(config: ml_collections.ConfigDict, tokenizer: Tokenizer | None) -> Meta:
  """Without data: an LM's Meta from its block size and tokenizer (sampling); a classifier's
  needs the saved facts (GenericSpec.read_meta)."""
  if not config.data.targets:
    return Meta(task='lm', vocab_size=tokenizer.vocab_size if tokenizer else None,
                block_size=config.data.block_size)
  return Meta(task='classification')


def make_spec(config: ml_collections.ConfigDict, directory: str | None = None) -> GenericSpec:
  """The spec of a config-named dataset; `directory` (a workdir or export) adds its class names
  and input kind from the saved facts when they are there."""
  d = config.data
  facts = {}
  if directory and paths.exists(paths.join(directory, FACTS_FILE)):
    facts = read_facts(directory)
  lm = not d.targets
  tok_kind = facts.get('tokenizer') or (CharVocab.KIND if lm else None)
  inputs = facts.get('inputs') or ('tokens' if lm else 'array')
  return GenericSpec(d.name, get_dataset, meta_from_config, inputs=inputs,
                     preprocess=d.preprocess or 'the stored feature as it is',
                     labels=tuple(facts.get('labels', ())), tokenizer=tok_kind, ops=d.preprocess,
                     stored_dtype=facts.get('stored_dtype', ''))
