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

Why safetensors for the params: a flat name -> tensor file with a JSON header that numpy, torch,
JAX and Rust read without this project, flax or pickle, memory-mappable, bfloat16 included. Flax's
msgpack (`flax.serialization`) needs flax (or a msgpack decoder that knows its ndarray extension)
to read and keeps no header to inspect.

What the dataset implies (the model meta, without loading data; the inputs' signature; the
tokenizer file to carry; labels and preprocessing) comes from its `DatasetSpec` (research/data);
adding a task is one builder in export_programs.PROGRAMS.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from research import build, checkpointing, data, models, paths, provenance
from research.data.spec import DatasetSpec, Meta
from research.errors import ConfigError
from research.tools.export_programs import (
  CHECK_BATCH,
  PROGRAMS,
  check_program,
  describe,
  export_program,
  random_inputs,
  results_tree,
)

PyTree = Any
EXPORT_DIR = 'export'
PARAMS_FILE = 'params.safetensors'
MANIFEST_FILE = 'manifest.json'
PROGRAM_SUFFIX = '.jaxexport'
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


# --- The workdir ------------------------------------------------------------------------------


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = paths.join(workdir, 'config.json')
  if not paths.exists(path):
    raise ConfigError(f'{path} is missing: --workdir must be a trained run (training writes '
                      'config.json and checkpoints/ there).')
  return ml_collections.ConfigDict(json.loads(paths.read_text(path)))


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
                      'metrics (runs trained before checkpointing.make_manager set best_fn have '
                      f'none on disk); use --checkpoint=latest or one of {steps}.')
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


def restore_model(config: ml_collections.ConfigDict, workdir: str, spec: DatasetSpec,
                  meta: Meta, step: int | None) -> tuple:
  """(model, input signature, step, params) of a run's checkpoint, on one device."""
  model = models.get_model(portable_model_config(config), meta)
  signature, _ = input_signature(spec, meta, model)
  example = dict(zip(signature, random_inputs(signature, 1, np.random.default_rng(0)),
                     strict=True))
  step, params = build.restore_params(config, workdir, model, example, step)
  return model, signature, step, params


def export_workdir(workdir: str, checkpoint: str = 'latest', check: bool = True) -> dict:
  """Writes WORKDIR/export/ (replacing an older one only once the new one is complete).

  Returns the manifest. Bad input (no run, no such step) raises ConfigError before any compute.
  `check` runs each exported program against the in-process model (RunError if they differ).
  """
  t0 = time.perf_counter()
  if not paths.isdir(paths.check(workdir, '--workdir')):
    raise ConfigError(f'--workdir={workdir} does not exist.')
  config = load_run_config(workdir)
  spec = data.get_spec(config, workdir)
  step = resolve_checkpoint(config, workdir, checkpoint)
  meta = spec.read_meta(config, workdir)
  if meta.task not in PROGRAMS:
    raise ConfigError(f'This is a {meta.task!r} run; export serves {" and ".join(PROGRAMS)} '
                      'models (for a pre-training run, export the run fine-tuned from it).')
  model, signature, step, params = restore_model(config, workdir, spec, meta, step)
  t_restore = time.perf_counter()

  # Built locally (beside the workdir's export when local, so the final move is a rename).
  tmp = tempfile.mkdtemp(prefix='.export-tmp-', dir=workdir if paths.is_local(workdir) else None)
  try:
    manifest = write_export(tmp, workdir, config, spec, meta, model, params, step, checkpoint,
                            check)
    manifest['export']['seconds'] = {'restore': round(t_restore - t0, 3),
                                     'total': round(time.perf_counter() - t0, 3)}
    with open(os.path.join(tmp, MANIFEST_FILE), 'w') as f:
      json.dump(manifest, f, indent=2)
    os.chmod(tmp, 0o755)  # mkdtemp made it private; the export is meant to be handed on.
    for entry in os.listdir(tmp):
      os.chmod(os.path.join(tmp, entry), 0o644)
    replace_dir(tmp, paths.join(workdir, EXPORT_DIR))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return manifest


def replace_dir(new: str, final: str) -> None:
  """Moves `new` to `final`; an existing `final` is moved aside first and deleted after. A URI
  `final` (object stores have no folder rename) is replaced by copying `new`'s files there."""
  if not paths.is_local(final):
    if paths.exists(final):
      paths.get(final).rmtree()
    paths.makedirs(final)
    for entry in sorted(os.listdir(new)):
      with open(os.path.join(new, entry), 'rb') as f:
        paths.get(paths.join(final, entry)).write_bytes(f.read())
    return
  if not os.path.exists(final):
    os.replace(new, final)
    return
  aside = final + f'.old-{os.getpid()}'
  os.replace(final, aside)
  os.replace(new, final)
  shutil.rmtree(aside)


def input_signature(spec: DatasetSpec, meta: Meta, model) -> tuple[dict, tuple[str, ...]]:
  """The model's inputs, as the dataset spec declares them; an LM takes up to its max_len."""
  return spec.signature(meta, model.cfg.max_len if meta.task == 'lm' else None)


def write_export(out: str, workdir: str, config: ml_collections.ConfigDict, spec: DatasetSpec,
                 meta: Meta, model, params: PyTree, step: int, checkpoint: str,
                 check: bool = True) -> dict:
  """Params, config, assets and programs into `out`; the manifest (without timings) returned."""
  params_path = os.path.join(out, PARAMS_FILE)
  save_params(params_path, params, {'step': str(step)})
  for name in ('config.json', *spec.assets):  # The tokenizer (vocab.json) among the assets.
    with open(os.path.join(out, name), 'wb') as f:
      f.write(paths.get(paths.join(workdir, name)).read_bytes())
  flat = flatten_params(params)
  dtypes: dict[str, int] = {}
  for x in flat.values():
    dtypes[str(x.dtype)] = dtypes.get(str(x.dtype), 0) + int(x.size)
  sixteen_bit = jnp.dtype(config.model.get('dtype', 'float32')).itemsize < 4
  tolerance = 5e-2 if sixteen_bit else 1e-4
  programs = {}
  for program in PROGRAMS[meta.task](model, params, meta, *input_signature(spec, meta, model)):
    t = time.perf_counter()
    exported = export_program(program)
    path = os.path.join(out, program.name + PROGRAM_SUFFIX)
    with open(path, 'wb') as f:
      f.write(exported.serialize())
    t_export = time.perf_counter() - t
    diff = check_program(program, exported, tolerance) if check else None
    programs[program.name] = {
        'file': os.path.basename(path), 'bytes': os.path.getsize(path), 'doc': program.doc,
        'args': describe(program.arg_names, program.args),
        'results': describe(program.result_names, results_tree(exported)),
        'constraints': list(program.constraints), 'platforms': list(exported.platforms),
        'export_seconds': round(t_export, 3),
        'check': check and {'batch': CHECK_BATCH, 'max_abs_diff': diff,
                            'platform': jax.default_backend()}}
  return {
      'format': 1,
      'model': {'name': config.model.name, 'task': meta.task, 'meta': meta.to_json(),
                'max_len': model.cfg.max_len if meta.task == 'lm' else None,  # KV cache size.
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
      'export': {'jax': jax.__version__, 'git_commit': provenance._git('rev-parse', 'HEAD'),
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
    lines.append(f'  {prog["file"]:<24} {prog["bytes"]:,} bytes: {prog["doc"]}')
    c = prog['check']
    checked = (f'; max |exported - model| = {c["max_abs_diff"]:.2g} at batch {c["batch"]} on '
               f'{c["platform"]}' if c else '; not checked')
    lines.append(f'  {"":<24} lowered for {"/".join(prog["platforms"])}{checked}')
  return '\n'.join(lines)
