r"""Predictions from an export folder (WORKDIR/export/, see research/tools/export.py) in Python.

  from research.tools import inference
  mlp = inference.load('/tmp/mnist_mlp/export')
  mlp.predict(images_Bx28x28x1)             # class ids (uint8 pixels or floats in [0, 1])
  clf = inference.load('/tmp/sst2/export')
  clf.classify(['a gripping , funny film .'])  # label names
  lm = inference.load('/tmp/lm_cpu/export')
  lm.generate('ROMEO:', num_tokens=200)     # the continuation

  python -m research.tools.inference /tmp/mnist_mlp/export --images=batch.npy
  python -m research.tools.inference /tmp/lm_cpu/export --prompt='ROMEO:' --num_tokens=200

The model is rebuilt from config.json and params.safetensors with this project's code (so the
params file is what is checked here; the StableHLO programs beside it need only jax). Inputs are
checked against the exported signature first: a wrong shape is a ConfigError naming it. How raw
inputs become the model's (pixel scaling, the tokenizer) is the dataset's spec (research/data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import data, models
from research.data.spec import Meta
from research.errors import ConfigError
from research.models.decode import check_sample_args, encode_prompt, make_sampler
from research.tools.export import MANIFEST_FILE, load_params, portable_model_config


class Exported:
  """The manifest, config, params and model of one export folder."""

  def __init__(self, export_dir: str):
    self.manifest = read_manifest(export_dir)
    with open(os.path.join(export_dir, 'config.json')) as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    self.export_dir = export_dir
    self.spec = data.get_spec(self.config, export_dir)
    self.meta = Meta.from_json(self.manifest['model']['meta'])
    self.labels = self.manifest['model']['labels']
    self.tokenizer = self.spec.load_tokenizer(export_dir)
    self.model = models.get_model(portable_model_config(self.config), self.meta)
    self.params = jax.device_put(load_params(os.path.join(export_dir,
                                                          self.manifest['params']['file'])))
    self._apply = jax.jit(lambda p, kw: self.model.apply({'params': p}, **kw, train=False))
    # 'l <= 64' -> {'l': 64}: the longest sequence the position table covers.
    self.limits = {c.split('<=')[0].strip(): int(c.split('<=')[1])
                   for c in self.manifest['programs']['logits']['constraints'] if '<=' in c}

  def signature(self) -> list[dict]:
    return self.manifest['programs']['logits']['args']

  def check_inputs(self, arrays: dict[str, np.ndarray]) -> None:
    """ConfigError unless each array's rank and fixed dims match the exported signature."""
    names = [spec['name'] for spec in self.signature()]
    if sorted(arrays) != sorted(names):
      raise ConfigError(f'The exported model takes {names}, got {sorted(arrays)}'
                        f'{" (use classify() for text)" if "input_mask" in names else ""}.')
    for spec in self.signature():
      x = arrays[spec['name']]
      want = tuple(spec['shape'])
      shown = '(' + ', '.join(map(str, want)) + ')'
      fixed_ok = len(x.shape) == len(want) and all(
          isinstance(w, str) or w == d for w, d in zip(want, x.shape, strict=True))
      if not fixed_ok:
        raise ConfigError(f'{spec["name"]}: the exported model takes shape {shown} (b = batch) '
                          f'{spec["dtype"]}, got {tuple(x.shape)}.')
      for dim, limit in self.limits.items():
        if dim in want and x.shape[want.index(dim)] > limit:
          raise ConfigError(f'{spec["name"]}: length {x.shape[want.index(dim)]} is more than the '
                            f'{limit} positions the model takes ({dim} <= {limit}).')

  def logits(self, **inputs) -> np.ndarray:
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    self.check_inputs(arrays)
    kw = {s['name']: jnp.asarray(arrays[s['name']], s['dtype']) for s in self.signature()}
    return np.asarray(self._apply(self.params, kw))


class Classifier(Exported):
  """predict(arrays) -> class ids; classify(texts) -> label names (runs with a tokenizer)."""

  def predict(self, inputs) -> np.ndarray:
    """Class ids of raw arrays (uint8 pixels are scaled as training did)."""
    return self.logits(inputs=self.spec.prepare(inputs)).argmax(-1)

  def classify(self, texts: list[str]) -> list[str]:
    if self.spec.inputs != 'text':
      raise ConfigError(f'classify() needs a text model; this one takes {self.spec.inputs} '
                        'inputs: use predict() for arrays.')
    if isinstance(texts, str):
      texts = [texts]
    arrays = self.spec.encode_texts(self.tokenizer, texts, self.meta.max_len)
    return [self.labels[i] for i in self.logits(**arrays).argmax(-1)]

  __call__ = predict


class LanguageModel(Exported):
  """generate(prompt) -> text; logits(inputs=tokens_BxL) -> next-token logits_BxLxV."""

  def __init__(self, export_dir: str):
    super().__init__(export_dir)
    self._samplers = {}  # One compiled sampler per (num_tokens, temperature, top_k).

  def _sampler(self, num_tokens: int, temperature: float, top_k: int):
    key = (num_tokens, temperature, top_k)
    if key not in self._samplers:
      self._samplers[key] = make_sampler(self.model, num_tokens=num_tokens,
                                         temperature=temperature, top_k=top_k)
    return self._samplers[key]

  def generate(self, prompt: str, num_tokens: int = 200, temperature: float = 0.8,
               top_k: int = 0, seed: int = 0) -> str:
    """The num_tokens tokens after `prompt`, decoded (KV cache, sliding window past max_len)."""
    check_sample_args(num_tokens, temperature, top_k)
    prompt_1xP = encode_prompt(self.tokenizer, prompt)
    tokens = self._sampler(num_tokens, temperature, top_k)(self.params, prompt_1xP,
                                                           jax.random.key(seed))
    return self.tokenizer.decode(np.asarray(tokens)[0])

  __call__ = generate


def load(export_dir: str) -> Classifier | LanguageModel:
  """The export in `export_dir` as a callable: predict/classify, or generate for an LM."""
  task = read_manifest(export_dir)['model']['task']
  return LanguageModel(export_dir) if task == 'lm' else Classifier(export_dir)


def read_manifest(export_dir: str) -> dict:
  path = os.path.join(export_dir, MANIFEST_FILE)
  if not os.path.exists(path):
    raise ConfigError(f'{path} is missing: pass a folder written by --mode=export '
                      '(WORKDIR/export).')
  with open(path) as f:
    return json.load(f)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('export_dir')
  parser.add_argument('--images', help='.npy batch of inputs for a classifier')
  parser.add_argument('--text', action='append', help='a sentence to classify (repeatable)')
  parser.add_argument('--prompt', help='text for a language model to continue')
  parser.add_argument('--num_tokens', type=int, default=200)
  parser.add_argument('--temperature', type=float, default=0.8)
  parser.add_argument('--top_k', type=int, default=0)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  try:
    model = load(args.export_dir)
    if isinstance(model, LanguageModel):
      prompt = '\n' if args.prompt is None else args.prompt
      print(prompt + model.generate(prompt, args.num_tokens, args.temperature, args.top_k,
                                    args.seed))
    elif args.text:
      print('\n'.join(model.classify(args.text)))
    elif args.images:
      print(' '.join(map(str, model.predict(np.load(args.images)))))
    else:
      raise ConfigError('Give --images=FILE.npy or --text=SENTENCE for a classifier.')
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
