"""Hugging Face GPT-2 and BERT checkpoints, read and written exactly (`config.init_from=hf:PATH`,
`--mode=export --format=hf`).

  open_checkpoint(path)        config.json + safetensors tensors (sharded too) + model_type
  model_keys(hf_config)        the config.model keys that express the architecture
  to_params(ckpt, cfg, shapes) our params by name, with what was loaded / is new / was left out;
                               a shape that does not fit is a ConfigError naming both shapes
  to_hf(params, cfg)           our params as Hugging Face tensors, named and laid out as
                               save_pretrained writes them (tied weights omitted, as it does)

The name and layout map per architecture is research/hf/names.py; the config map configs.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np

from research.config import complete_model_config
from research.data.tokenizers import HFTokenizer, hf_folder
from research.errors import ConfigError
from research.hf import configs, files, names
from research.hf.configs import hf_config, model_keys, model_type_of

SOURCE = 'hf_source'  # WORKDIR/hf_source/: the loaded folder's JSON files, kept for export.
SOURCE_FILES = ('config.json', 'tokenizer_config.json', 'generation_config.json',
                'special_tokens_map.json')

__all__ = ['Checkpoint', 'Loaded', 'configure', 'hf_config', 'keep_source', 'model_keys',
           'open_checkpoint', 'parse', 'to_hf', 'to_params', 'tokenizer']

parse = hf_folder  # `config.init_from=hf:PATH` -> PATH (None for any other value).


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  path: str
  config: dict[str, Any]
  kind: str  # 'gpt2' | 'bert' (config.json's model_type).
  tensors: dict[str, np.ndarray]


def open_checkpoint(path: str) -> Checkpoint:
  """Reads a checkpoint folder; ConfigError (before any compute) for anything we cannot load."""
  config = files.read_config(path)
  kind = configs.model_type(config, f'{path}/{files.CONFIG}')
  return Checkpoint(path, config, kind, files.read_tensors(files.weight_files(path)))


def tokenizer(path: str, vocab_size: int | None = None) -> HFTokenizer:
  """The folder's tokenizer.json; given `vocab_size` (the embedding's rows), they must agree."""
  tok = HFTokenizer.from_file(os.path.join(path, files.TOKENIZER))
  if vocab_size is not None and tok.vocab_size != vocab_size:
    raise ConfigError(f'{path}: the tokenizer has {tok.vocab_size} tokens but the embedding has '
                      f'{vocab_size} rows (config.json vocab_size); they must be equal.')
  return tok


def _head(cfg: ml_collections.ConfigDict) -> str:
  return 'mlm' if cfg.name == 'transformer_encoder_mlm' else 'classifier'


def rules(cfg: ml_collections.ConfigDict) -> list[names.Rule]:
  if model_type_of(cfg) == 'gpt2':
    return names.gpt2_rules(cfg.num_layers, cfg.num_heads, bool(cfg.tie_embeddings))
  return names.bert_rules(cfg.num_layers, cfg.num_heads, cfg.type_vocab_size, _head(cfg),
                          bool(cfg.pooler))


def _full_names(name: str, kind: str) -> tuple[str, ...]:
  """Where a rule's tensor may be: a leading '/' is top level (a head); else under the base
  model's prefix (a *For* model's file) or bare (a base model's file, e.g. GPT2Model)."""
  if name.startswith('/'):
    return (name[1:],)
  return (f'{configs.ARCHITECTURES[kind][1]}.{name}', name)


@dataclasses.dataclass(frozen=True)
class Loaded:
  path: str
  values: dict[str, np.ndarray]  # Our param name -> array, in our layout.
  loaded: tuple[str, ...]  # Hugging Face names read.
  new: tuple[str, ...]  # Our params the checkpoint lacks (e.g. a classifier head).
  left_out: tuple[str, ...]  # Hugging Face tensors this model has no use for.

  def describe(self) -> str:
    show = lambda xs: f'{len(xs)}: ' + ', '.join(xs) if xs else 'none'
    return (f'init_from hf:{self.path}:\n  loaded: {len(self.loaded)} tensors\n'
            f'  newly initialised (not in the checkpoint): {show(self.new)}\n'
            f'  left out (not used by this model): {show(self.left_out)}')


def to_params(ckpt: Checkpoint, cfg: ml_collections.ConfigDict,
              shapes: dict[str, tuple[int, ...]]) -> Loaded:
  """Our params (by name) from the checkpoint; `shapes` is this model's {name: shape}."""
  kind = model_type_of(cfg)
  if kind != ckpt.kind:
    raise ConfigError(f'hf:{ckpt.path} is a {ckpt.kind} checkpoint but config.model.name='
                      f'{cfg.name!r} builds a {kind} model.')
  configs.check_expressible(cfg, kind)
  values, used, bad = {}, [], []
  for rule in rules(cfg):
    key = next((n for n in _full_names(rule.hf, kind) if n in ckpt.tensors), None)
    if key is None or not all(o in shapes for o in rule.ours):
      continue
    tensor = ckpt.tensors[key]
    like = tuple(jax.ShapeDtypeStruct(shapes[o], np.float32) for o in rule.ours)
    want = tuple(jax.eval_shape(rule.save, like).shape)
    if tensor.shape != want:
      bad.append(f'{key}: checkpoint {tensor.shape}, this model needs {want} '
                 f'(config.model -> {", ".join(rule.ours)})')
      continue
    values.update(zip(rule.ours, (np.asarray(a) for a in rule.load(tensor)), strict=True))
    used.append(key)
  if bad:
    raise ConfigError(f'hf:{ckpt.path}: {len(bad)} tensor(s) have another shape than this model '
                      'builds:\n  ' + '\n  '.join(bad[:8]))
  if not values:
    raise ConfigError(f'hf:{ckpt.path}: no tensor matches this model (names like '
                      f'{sorted(ckpt.tensors)[:3]}).')
  return Loaded(ckpt.path, values, tuple(used), tuple(n for n in shapes if n not in values),
                tuple(n for n in ckpt.tensors if n not in used))


def to_hf(params: dict[str, np.ndarray], cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Hugging Face tensors from our params by name ('stack/block_0/...'); every param must map."""
  kind = model_type_of(cfg)
  configs.check_expressible(cfg, kind)
  out, covered = {}, set()
  for rule in rules(cfg):
    if all(o in params for o in rule.ours):
      out[_full_names(rule.hf, kind)[0]] = np.asarray(rule.save(tuple(params[o]
                                                                      for o in rule.ours)))
      covered.update(rule.ours)
  unmapped = sorted(set(params) - covered)
  if unmapped:
    raise ConfigError(f'These params have no Hugging Face {kind} name: {unmapped[:8]}.')
  return out


def merge_model_config(model: ml_collections.ConfigDict,
                       keys: dict[str, Any]) -> tuple[ml_collections.ConfigDict, list[str]]:
  """`model` with config.json's architecture keys; the list of what changed, for the console."""
  out = ml_collections.ConfigDict(model.to_dict())
  changes = []
  for key, value in keys.items():
    if out[key] != value:
      changes.append(f'config.model.{key}: {out[key]!r} -> {value!r}')
      out[key] = value
  return out, changes


def configure(config: ml_collections.ConfigDict, verbose: bool = True) -> ml_collections.ConfigDict:
  """For `init_from=hf:PATH`: the config with config.json's architecture in config.model (what
  changed is printed), its tokenizer checked against the embedding; before any compute."""
  path = parse(config.get('init_from', ''))
  if path is None:
    return config
  hf = files.read_config(path)
  where = f'config.init_from=hf:{path}'
  keys = model_keys(hf, where)
  model = complete_model_config(config.model)
  kind = configs.model_type(hf, where)
  if model_type_of(model) != kind:
    raise ConfigError(f'{where} is a {kind} checkpoint; config.model.name={model.name!r} builds '
                      f'a {model_type_of(model)} model.')
  if model.name == 'transformer_encoder':  # BertForSequenceClassification pools with a tanh.
    keys['pooler'] = True
  tokenizer(path, hf['vocab_size'])
  files.weight_files(path)  # No weights, or only pickled ones: refused now.
  model, changes = merge_model_config(model, keys)
  out = ml_collections.ConfigDict(config.to_dict())
  out.model = model
  if verbose:
    print(f'{where}: config.model from its config.json'
          + ''.join(f'\n  {c}' for c in changes), flush=True)
  return out


def keep_source(path: str, workdir: str) -> None:
  """Copies the loaded folder's small JSON files to WORKDIR/hf_source/, so an export keeps what
  we do not model (token ids, the tokenizer class, generation defaults) without the folder."""
  out = os.path.join(workdir, SOURCE)
  os.makedirs(out, exist_ok=True)
  for name in SOURCE_FILES:
    if os.path.exists(os.path.join(path, name)):
      shutil.copyfile(os.path.join(path, name), os.path.join(out, name))
