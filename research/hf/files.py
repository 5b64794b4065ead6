"""A Hugging Face checkpoint folder on disk: config.json, safetensors weights (one file or shards
with model.safetensors.index.json), tokenizer.json. Pickled weights are refused, never opened."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from research.errors import ConfigError

CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'
INDEX = 'model.safetensors.index.json'
TOKENIZER = 'tokenizer.json'
PICKLES = ('pytorch_model.bin', 'pytorch_model.bin.index.json', 'tf_model.h5', 'flax_model.msgpack')
DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
          'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
          'BOOL': np.bool_}
CONVERT = ('Convert it once, on a machine you trust, with transformers: '
           '`AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)` (or '
           'the Hub\'s "convert to safetensors" space); that writes model.safetensors.')


def read_config(path: str) -> dict:
  file = os.path.join(path, CONFIG)
  if not os.path.isdir(path):
    raise ConfigError(f'config.init_from=hf:{path}: no such folder (a Hugging Face checkpoint '
                      'folder: config.json, model.safetensors, tokenizer.json).')
  if not os.path.exists(file):
    raise ConfigError(f'config.init_from=hf:{path}: {CONFIG} is missing; a Hugging Face checkpoint '
                      f'folder holds config.json, model.safetensors and tokenizer.json '
                      f'(save_pretrained writes them). Found: {sorted(os.listdir(path))[:8]}.')
  with open(file) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f'{file} is not valid JSON: {e}.') from e


def weight_files(path: str) -> list[str]:
  """The safetensors files of the checkpoint, in shard order; ConfigError for anything else."""
  if os.path.exists(os.path.join(path, INDEX)):
    with open(os.path.join(path, INDEX)) as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    missing = [s for s in shards if not os.path.exists(os.path.join(path, s))]
    if missing:
      raise ConfigError(f'{os.path.join(path, INDEX)} names shards that are missing: {missing}.')
    return [os.path.join(path, s) for s in shards]
  if os.path.exists(os.path.join(path, WEIGHTS)):
    return [os.path.join(path, WEIGHTS)]
  pickled = [p for p in os.listdir(path) if p in PICKLES or p.endswith(('.bin', '.pt', '.pth'))]
  if pickled:
    raise ConfigError(f'{path} has weights only as {pickled}: a pickle can run arbitrary code when '
                      f'loaded, so it is refused. {CONVERT}')
  raise ConfigError(f'{path} has no weights: expected {WEIGHTS} (or {INDEX} and its shards).')


def read_tensors(files: list[str]) -> dict[str, np.ndarray]:
  """Every tensor of the files by name, bit for bit (bfloat16 included)."""
  out: dict[str, np.ndarray] = {}
  for file in files:
    with open(file, 'rb') as f:
      try:
        tensors = safetensors.deserialize(f.read())
      except Exception as e:  # noqa: BLE001 - the library's own error types.
        raise ConfigError(f'{file} is not a readable safetensors file: {e}.') from e
    for name, t in tensors:
      if t['dtype'] not in DTYPES:
        raise ConfigError(f'{file}: tensor {name} has dtype {t["dtype"]}, not one we read.')
      out[name] = np.frombuffer(t['data'], DTYPES[t['dtype']]).reshape(t['shape']).copy()
  return out


def write_tensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  """One model.safetensors with {'format': 'pt'} metadata, as save_pretrained writes it."""
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
                              metadata={'format': 'pt'})
