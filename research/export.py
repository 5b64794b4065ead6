r"""Export a trained run for inference: WORKDIR/export/ is everything needed to use the model.

  python launch.py --mode=export --workdir=/tmp/mnist_mlp [--checkpoint=latest|best|STEP]

  params.safetensors   the parameters, one tensor per leaf, named by path ('stack/block_0/...')
  config.json          the run's config, to rebuild the model with this project
  vocab.json           the tokenizer, for runs that have one
  <program>.jaxexport  a serialized `jax.export` (StableHLO) program with the params baked in and
                       a symbolic batch dimension: needs only `jax` to run
  manifest.json        parameter count and dtypes, each program's signature, the checkpoint step
                       and its metrics, the run's provenance, and the export's own check

Params come from the Orbax checkpoint, restored (checksums verified) into an abstract train state
built from WORKDIR/config.json, so no data is read and nothing in WORKDIR changes but export/
(built in a temporary folder, moved into place only when complete).

Adding a dataset is one `DataSpec` (the model meta it implies, without loading data, and the
inputs' signature); adding a task is one entry in PROGRAMS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from absl import logging
from jax import export as jax_export

from research import checkpointing, models, provenance
from research.config_checks import ConfigError
from research.reliability import RunError

PyTree = Any
EXPORT_DIR = 'export'
PARAMS_FILE = 'params.safetensors'
MANIFEST_FILE = 'manifest.json'
PROGRAM_SUFFIX = '.jaxexport'
# Lowered for every platform jax.export supports here, so the same file serves a CPU or GPU/TPU
# process (the check below runs only on the exporting machine's backend).
PLATFORMS = ('cpu', 'cuda', 'tpu')
CHECK_BATCH = 3  # The export's own check runs each program at this (untraced) batch size.
SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
                      'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32,
                      'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'U16': np.uint16,
                      'U32': np.uint32, 'U64': np.uint64, 'BOOL': np.bool_}


# --- Params <-> one portable file ------------------------------------------------------------


def flatten_params(params: PyTree) -> dict[str, np.ndarray]:
  """{'a/b/kernel': array}: flax param names never contain '/', so the split is unambiguous."""
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [str(getattr(k, 'key', k)) for k in path]
    if any('/' in n for n in names):
      raise ValueError(f'Parameter path {names} has a "/" in a name.')
    flat['/'.join(names)] = np.asarray(jax.device_get(leaf))
  return flat


def save_params(path: str, params: PyTree, metadata: dict[str, str] | None = None) -> None:
  safetensors.numpy.save_file(flatten_params(params), path,
                              metadata={'format': 'flax-params', 'separator': '/',
                                        **(metadata or {})})


def load_params(path: str) -> dict:
  """The nested params dict of numpy arrays, bit for bit as saved (bfloat16 included)."""
  with open(path, 'rb') as f:
    tensors = safetensors.deserialize(f.read())
  params: dict = {}
  for name, t in tensors:
    *parents, leaf = name.split('/')
    node = params
    for p in parents:
      node = node.setdefault(p, {})
    dtype = SAFETENSORS_DTYPES[t['dtype']]
    node[leaf] = np.frombuffer(t['data'], dtype=dtype).reshape(t['shape']).copy()
  return params


# --- What each dataset implies, without loading it ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """meta(config, workdir): the dataset meta models.get_model needs (JSON-able).

  inputs(meta, model): ({model input name: (dims, dtype)}, symbolic constraints), dims written
  for `jax.export.symbolic_shape` with `b` the batch. assets: workdir files copied to export/.
  """

  meta: Callable[[ml_collections.ConfigDict, str], dict]
  inputs: Callable[[dict, Any], tuple[dict[str, tuple[str, str]], tuple[str, ...]]]
  assets: tuple[str, ...] = ()
  labels: tuple[str, ...] = ()
  preprocess: str = ''


def _mnist_meta(config: ml_collections.ConfigDict, workdir: str) -> dict:
  return {'task': 'classification', 'num_classes': 10, 'input_shape': [28, 28, 1]}


def _shakespeare_meta(config: ml_collections.ConfigDict, workdir: str) -> dict:
  from research.data.shakespeare import VOCAB_FILE, CharVocab

  path = os.path.join(workdir, VOCAB_FILE)
  if not os.path.exists(path):
    raise ConfigError(f'{path} is missing: the export needs the vocabulary saved by training.')
  return {'task': 'lm', 'vocab_size': len(CharVocab.load(path)),
          'block_size': config.data.block_size}


def _image_inputs(meta: dict, model) -> tuple[dict, tuple]:
  dims = ', '.join(map(str, meta['input_shape']))
  return {'inputs': (f'b, {dims}', 'float32')}, ()


def _token_inputs(meta: dict, model) -> tuple[dict, tuple]:
  return {'inputs': ('b, l', 'int32')}, (f'l <= {model.cfg.max_len}',)


DATA_SPECS = {
    'mnist': DataSpec(_mnist_meta, _image_inputs, labels=tuple('0123456789'),
                      preprocess='float32 pixels in [0, 1] (uint8 / 255), shape 28x28x1'),
    'tiny_shakespeare': DataSpec(_shakespeare_meta, _token_inputs, assets=('vocab.json',),
                                 preprocess='character ids from vocab.json (sorted characters)'),
}


# --- Programs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Program:
  """fn(*args) with the params closed over; args are ShapeDtypeStructs with symbolic dims.

  check_args(batch, rng) gives concrete args for the export's own check.
  """

  name: str
  fn: Callable
  args: tuple
  arg_names: tuple[str, ...]
  result_names: tuple[str, ...]
  doc: str
  check_args: Callable[[int, np.random.Generator], tuple]
  constraints: tuple[str, ...] = ()  # On the symbolic dims, e.g. 'l <= 64'.


def random_inputs(signature: dict, batch: int, rng: np.random.Generator, high: int = 2,
                  length: int = 8) -> tuple:
  """Concrete arrays for a signature: `b` -> batch, `l` -> length; ints in [0, high)."""
  out = []
  for dims, dtype in signature.values():
    shape = [batch if d == 'b' else length if d == 'l' else int(d)
             for d in (x.strip() for x in dims.split(','))]
    if np.issubdtype(np.dtype(dtype), np.integer):
      out.append(rng.integers(0, high, shape).astype(dtype))
    else:
      out.append(rng.random(shape, np.float32).astype(dtype))
  return tuple(out)


def symbolic_args(signature: dict, scope) -> tuple:
  return tuple(jax.ShapeDtypeStruct(jax_export.symbolic_shape(dims, scope=scope), jnp.dtype(dt))
               for dims, dt in signature.values())


def classifier_programs(model, params: PyTree, meta: dict, spec: DataSpec) -> list[Program]:
  signature, constraints = spec.inputs(meta, model)
  names = tuple(signature)

  def logits(*inputs):
    return model.apply({'params': params}, **dict(zip(names, inputs, strict=True)),
                       train=False)

  return [Program('logits', logits, symbolic_args(signature, jax_export.SymbolicScope(constraints)),
                  names, ('logits',), f'({", ".join(names)}) -> logits_BxC',
                  lambda b, rng: random_inputs(signature, b, rng, meta.get('vocab_size', 2)),
                  constraints)]


def lm_programs(model, params: PyTree, meta: dict, spec: DataSpec) -> list[Program]:
  """logits over a sequence, and prefill + decode_step to drive KV-cache generation from outside.

  The cache is the decoder's `cache` collection without its index: `pos` says where `token` goes.
  Positions must stay below max_len; past it, prefill again from the last tokens (a sliding
  window, as research/sampling.py does).
  """
  from research.models.lm import decoder, init_cache

  max_len, vocab = model.cfg.max_len, meta['vocab_size']
  dec = decoder(model)
  constraints = (f'l <= {max_len}',)
  b, length = jax_export.symbolic_shape('b, l', constraints=constraints)
  cache_1 = jax.eval_shape(lambda: init_cache(model, 1))
  cache_1.pop('index')
  b_decode, = jax_export.symbolic_shape('b')  # Own scope: `l` is not among decode_step's dims.
  cache_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct((b_decode, *s.shape[1:]), s.dtype),
                            cache_1)

  def run(cache: dict, tokens_BxL, pos):
    logits_BxLxV, variables = dec.apply({'params': params, 'cache': dict(cache, index=pos)},
                                        tokens_BxL, train=False, mutable=['cache'])
    new_cache = dict(variables['cache'])
    new_cache.pop('index')
    return logits_BxLxV[:, -1], new_cache

  def logits(tokens_BxL):
    return model.apply({'params': params}, tokens_BxL, train=False)

  def prefill(tokens_BxL):
    cache = init_cache(model, tokens_BxL.shape[0])
    cache.pop('index')
    return run(cache, tokens_BxL, jnp.int32(0))

  def decode_step(cache, token_B, pos):
    return run(cache, token_B[:, None], pos)

  def tokens(batch, rng, length=max_len):
    return rng.integers(0, vocab, (batch, length)).astype(np.int32)

  def decode_args(batch, rng):
    prompt = max(1, max_len // 2)
    _, cache = jax.jit(prefill)(tokens(batch, rng, prompt))
    return cache, tokens(batch, rng, 1)[:, 0], np.int32(prompt)

  tokens_spec = jax.ShapeDtypeStruct((b, length), jnp.int32)
  token_spec = jax.ShapeDtypeStruct((b_decode,), jnp.int32)
  pos_spec = jax.ShapeDtypeStruct((), jnp.int32)
  return [
      Program('logits', logits, (tokens_spec,), ('inputs',), ('logits',),
              'inputs_BxL (token ids) -> logits_BxLxV (next-token logits at every position)',
              lambda batch, rng: (tokens(batch, rng),), constraints),
      Program('prefill', prefill, (tokens_spec,), ('inputs',), ('logits', 'cache'),
              'inputs_BxL (prompt ids) -> (next-token logits_BxV, cache of positions 0..L-1)',
              lambda batch, rng: (tokens(batch, rng, max(1, max_len // 2)),), constraints),
      Program('decode_step', decode_step, (cache_spec, token_spec, pos_spec),
              ('cache', 'token', 'pos'), ('logits', 'cache'),
              '(cache, token_B at position pos) -> (next-token logits_BxV, cache)',
              decode_args, (f'pos < {max_len}',)),
  ]


PROGRAMS = {'classification': classifier_programs, 'lm': lm_programs}


def export_program(program: Program) -> jax_export.Exported:
  return jax_export.export(jax.jit(program.fn), platforms=PLATFORMS)(*program.args)


def check_program(program: Program, exported: jax_export.Exported, tolerance: float) -> float:
  """Max |exported - in-process| over the outputs at batch CHECK_BATCH; RunError past tolerance."""
  args = program.check_args(CHECK_BATCH, np.random.default_rng(0))
  want = jax.tree.leaves(jax.jit(program.fn)(*args))
  got = jax.tree.leaves(exported.call(*args))
  diff = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(w, np.float32))))
             for a, w in zip(got, want, strict=True))
  scale = max(float(np.max(np.abs(np.asarray(w, np.float32)))) for w in want)
  if not diff <= tolerance * max(1.0, scale):
    raise RunError(f'The exported {program.name} program differs from the model by {diff:g} '
                   f'(tolerance {tolerance:g} x {max(1.0, scale):g}); nothing was written.')
  return diff


def describe(names: tuple[str, ...], trees: tuple) -> list[dict]:
  """One entry per array, in the program's flat order: name (with the cache's tree path), shape
  (symbolic dims as strings) and dtype."""
  out = []
  for name, tree in zip(names, trees, strict=True):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      out.append({'name': name + jax.tree_util.keystr(path), 'dtype': str(leaf.dtype),
                  'shape': [d if isinstance(d, int) else str(d) for d in leaf.shape]})
  return out


def results_tree(exported: jax_export.Exported) -> tuple:
  results = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  return results if isinstance(results, tuple) else (results,)


# --- The workdir ------------------------------------------------------------------------------


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConfigError(f'{path} is missing: --workdir must be a trained run (training writes '
                      'config.json and checkpoints/ there).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def portable_model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's model config with XLA attention: same params, lowers on every platform."""
  cfg = ml_collections.ConfigDict(config.model.to_dict())
  if cfg.get('attention_impl', 'xla') != 'xla':
    cfg.attention_impl = 'xla'
  return cfg


def resolve_checkpoint(config: ml_collections.ConfigDict, workdir: str, which: str) -> int | None:
  """The step to export (None = the newest that restores), or a ConfigError naming the options."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = checkpointing.complete_steps(directory)
  if not steps:
    raise ConfigError(f'No checkpoint in {directory}: train first (--mode=train with this '
                      '--workdir), or point --workdir at a trained run.')
  if which == 'latest':
    return None
  if which.isdigit():
    if int(which) not in steps:
      raise ConfigError(f'--checkpoint={which}: there is no step {which} in {directory}; '
                        f'saved steps: {steps}.')
    return int(which)
  if which != 'best':
    raise ConfigError(f'--checkpoint={which!r} is not latest, best or a step number.')
  metric = config.checkpoint.get('best_metric')
  if not metric:
    raise ConfigError('--checkpoint=best: this run set no config.checkpoint.best_metric, so no '
                      f'step is "best"; use --checkpoint=latest or one of {steps}.')
  manager = checkpointing.open_reader(workdir, config.checkpoint)
  try:
    best = manager.best_step()
  except KeyError as e:
    raise ConfigError(f'--checkpoint=best: a checkpoint has eval metrics without {metric!r} '
                      f'(missing {e}); use --checkpoint=latest or one of {steps}.') from e
  finally:
    manager.close()
  if best is None:
    raise ConfigError(f'--checkpoint=best: no checkpoint in {directory} was saved with eval '
                      f'metrics; use --checkpoint=latest or one of {steps}.')
  return best


def step_metrics(config: ml_collections.ConfigDict, workdir: str, step: int) -> dict | None:
  manager = checkpointing.open_reader(workdir, config.checkpoint)
  try:
    return manager.metrics(step)
  finally:
    manager.close()


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def export_workdir(workdir: str, checkpoint: str = 'latest') -> dict:
  """Writes WORKDIR/export/ (replacing an older one only once the new one is complete).

  Returns the manifest. Bad input (no run, no such step) raises ConfigError before any compute.
  """
  t0 = time.perf_counter()
  if not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir} does not exist.')
  config = load_run_config(workdir)
  name = config.data.name
  if name not in DATA_SPECS:
    raise ConfigError(f'Export does not know dataset {name!r} (known: {sorted(DATA_SPECS)}); '
                      'add a DataSpec for it in research/export.py.')
  spec = DATA_SPECS[name]
  step = resolve_checkpoint(config, workdir, checkpoint)
  meta = spec.meta(config, workdir)
  if meta['task'] not in PROGRAMS:
    raise ConfigError(f'Export has no programs for task {meta["task"]!r}.')
  model = models.get_model(portable_model_config(config), meta)
  signature, _ = spec.inputs(meta, model)
  example = dict(zip(signature, random_inputs(signature, 1, np.random.default_rng(0)),
                     strict=True))
  step, params = checkpointing.restore_params(config, workdir, model, example, step)
  t_restore = time.perf_counter()

  tmp = tempfile.mkdtemp(prefix='.export-tmp-', dir=workdir)
  try:
    manifest = write_export(tmp, workdir, config, spec, meta, model, params, step, checkpoint)
    manifest['export']['seconds'] = {'restore': round(t_restore - t0, 3),
                                     'total': round(time.perf_counter() - t0, 3)}
    with open(os.path.join(tmp, MANIFEST_FILE), 'w') as f:
      json.dump(manifest, f, indent=2)
    os.chmod(tmp, 0o755)  # mkdtemp made it private; the export is meant to be handed on.
    for name in os.listdir(tmp):
      os.chmod(os.path.join(tmp, name), 0o644)
    final = os.path.join(workdir, EXPORT_DIR)
    if os.path.exists(final):
      shutil.rmtree(final)
    os.replace(tmp, final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info('Exported step %d of %s to %s in %.1fs.', step, workdir, final,
               time.perf_counter() - t0)
  return manifest


def write_export(out: str, workdir: str, config: ml_collections.ConfigDict, spec: DataSpec,
                 meta: dict, model, params: PyTree, step: int, checkpoint: str) -> dict:
  """Params, config, assets and programs into `out`; the manifest (without timings) returned."""
  params_path = os.path.join(out, PARAMS_FILE)
  save_params(params_path, params, {'step': str(step)})
  shutil.copyfile(os.path.join(workdir, 'config.json'), os.path.join(out, 'config.json'))
  for asset in spec.assets:
    shutil.copyfile(os.path.join(workdir, asset), os.path.join(out, asset))
  flat = flatten_params(params)
  dtypes: dict[str, int] = {}
  for x in flat.values():
    dtypes[str(x.dtype)] = dtypes.get(str(x.dtype), 0) + int(x.size)
  sixteen_bit = jnp.dtype(config.model.get('dtype', 'float32')).itemsize < 4
  tolerance = 5e-2 if sixteen_bit else 1e-4
  programs = {}
  for program in PROGRAMS[meta['task']](model, params, meta, spec):
    t = time.perf_counter()
    exported = export_program(program)
    path = os.path.join(out, program.name + PROGRAM_SUFFIX)
    with open(path, 'wb') as f:
      f.write(exported.serialize())
    t_export = time.perf_counter() - t
    diff = check_program(program, exported, tolerance)
    programs[program.name] = {
        'file': os.path.basename(path), 'bytes': os.path.getsize(path), 'doc': program.doc,
        'args': describe(program.arg_names, program.args),
        'results': describe(program.result_names, results_tree(exported)),
        'constraints': list(program.constraints), 'platforms': list(exported.platforms),
        'export_seconds': round(t_export, 3),
        'check': {'batch': CHECK_BATCH, 'max_abs_diff': diff, 'platform': jax.default_backend()}}
  return {
      'format': 1,
      'model': {'name': config.model.name, 'task': meta['task'], 'meta': meta,
                'labels': list(spec.labels), 'preprocess': spec.preprocess,
                'assets': list(spec.assets)},
      'checkpoint': {'requested': checkpoint, 'step': step,
                     'metrics': step_metrics(config, workdir, step),
                     'directory': os.path.join(os.path.abspath(workdir), 'checkpoints')},
      'params': {'file': PARAMS_FILE, 'format': 'safetensors', 'count': sum(dtypes.values()),
                 'dtypes': dtypes, 'bytes': os.path.getsize(params_path),
                 'sha256': _sha256(params_path), 'arrays': len(flat)},
      'programs': programs,
      'provenance': _read_json(os.path.join(workdir, 'provenance.json')),
      'export': {'jax': jax.__version__, 'git_commit': provenance.provenance('')['git_commit'],
                 'backend': jax.default_backend(), 'workdir': os.path.abspath(workdir)},
  }


def summary(manifest: dict) -> str:
  """What --mode=export prints: where, which step, and each file with its size and check."""
  m, p, ckpt = manifest, manifest['params'], manifest['checkpoint']
  out = os.path.join(m['export']['workdir'], EXPORT_DIR)
  lines = [f'Exported step {ckpt["step"]} (--checkpoint={ckpt["requested"]}) to {out} '
           f'in {m["export"]["seconds"]["total"]:.1f}s:',
           f'  {p["file"]:<24} {p["count"]:,} params {p["dtypes"]}, {p["bytes"]:,} bytes']
  for prog in m['programs'].values():
    lines.append(f'  {prog["file"]:<24} {prog["doc"]}; {prog["bytes"]:,} bytes, '
                 f'{"/".join(prog["platforms"])}; max |exported - model| = '
                 f'{prog["check"]["max_abs_diff"]:.2g} at batch {prog["check"]["batch"]}')
  return '\n'.join(lines)
