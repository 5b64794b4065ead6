"""Transfer learning: start a run from another run's parameters, and optionally freeze them.

`config.init_from=hf:PATH` loads a Hugging Face GPT-2 / BERT checkpoint folder instead (research/hf:
its config.json sets the architecture, train.start; its tensors are mapped by name and layout).

`config.init_from` names a run's workdir (its newest checkpoint is used) or one checkpoint folder
(WORKDIR/checkpoints/STEP). A fresh run (never a resumed one: a checkpoint of this run wins) then
takes every parameter whose path name and shape match, e.g. the encoder of a masked-LM run:

  loaded             same path and shape in both: copied from the checkpoint
  skipped            only in the checkpoint (e.g. the MLM head): ignored
  newly initialised  only in this model (e.g. the classifier head): fresh init kept
  shape mismatch     same path, other shape: refused (ConfigError) before training, naming them

The lists are printed and written to WORKDIR/init_from.json. Only the params are read (partial
Orbax restore, as numpy), so the pre-training run's optimizer state and topology do not matter.

Freezing the loaded parameters and a lower encoder learning rate are optimizer settings
(`config.optimizer.freeze`, `encoder_lr_multiplier`): see optimizers.partition_optimizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from research import hf, paths
from research.checkpointing import complete_steps
from research.config import complete_model_config
from research.errors import ConfigError
from research.optimizers import path_name

PyTree = Any
RECORD = 'init_from.json'


def flat_named(tree: PyTree) -> dict[str, Any]:
  return {path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def resolve(init_from: str) -> tuple[str, int]:
  """(the checkpoint's `state` folder, its step) for a workdir, checkpoints dir or step dir."""
  path = paths.absolute(os.path.expanduser(init_from))
  hint = ('Give the workdir of a finished run (it holds checkpoints/) or one checkpoint folder '
          '(WORKDIR/checkpoints/STEP), or set config.init_from=\'\' to start from scratch.')
  if not paths.exists(paths.check(path, 'config.init_from')):
    raise ConfigError(f'config.init_from={init_from!r}: {path} does not exist. {hint}')
  if paths.isdir(paths.join(path, 'state')) and os.path.basename(path).isdigit():
    return paths.join(path, 'state'), int(os.path.basename(path))
  directory = path if os.path.basename(path) == 'checkpoints' else paths.join(path, 'checkpoints')
  steps = complete_steps(directory)
  if not steps:
    raise ConfigError(f'config.init_from={init_from!r}: no checkpoint under {directory}. {hint}')
  return paths.join(directory, str(steps[-1]), 'state'), steps[-1]


def saved_param_shapes(state_dir: str) -> dict[str, tuple[int, ...]]:
  """{param path: shape} from the checkpoint's metadata (no array is read)."""
  try:
    metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
    params = getattr(metadata, 'tree', metadata)['params']
  except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets the same clear message.
    raise ConfigError(f'config.init_from: cannot read the parameters of {state_dir} '
                      f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}).') from e
  return {name: tuple(m.shape) for name, m in flat_named(params).items()}


@dataclasses.dataclass(frozen=True)
class Plan:
  state_dir: str
  step: int
  loaded: tuple[str, ...]
  skipped: tuple[str, ...]
  new: tuple[str, ...]

  def describe(self) -> str:
    """Grouped by top-level module (the full lists go to WORKDIR/init_from.json)."""
    return (f'init_from {self.state_dir} (step {self.step}):\n'
            f'  loaded: {_grouped(self.loaded)}\n'
            f'  skipped (only in the checkpoint): {_grouped(self.skipped)}\n'
            f'  newly initialised (only in this model): {_grouped(self.new)}')


def _grouped(names: tuple[str, ...]) -> str:
  groups: dict[str, list[str]] = {}
  for name in names:
    groups.setdefault(name.split('/')[0], []).append(name)
  parts = [members[0] if len(members) == 1 else f'{top}/* ({len(members)} arrays)'
           for top, members in groups.items()]
  return f'{len(names)} arrays: ' + ', '.join(parts) if names else 'none'


def plan(init_from: str, params: PyTree) -> Plan:
  """Matches this model's params (arrays or shape structs) against the checkpoint's, by name."""
  state_dir, step = resolve(init_from)
  saved = saved_param_shapes(state_dir)
  ours = {name: tuple(x.shape) for name, x in flat_named(params).items()}
  mismatched = [f'{n}: checkpoint {saved[n]}, this model {shape}' for n, shape in ours.items()
                if n in saved and saved[n] != shape]
  if mismatched:
    raise ConfigError(
        f'config.init_from: {len(mismatched)} parameter(s) of {state_dir} have another shape than '
        'this model builds:\n  ' + '\n  '.join(mismatched[:8]) +
        (f'\n  ... and {len(mismatched) - 8} more' if len(mismatched) > 8 else '') +
        '\nUse the pre-trained run\'s model '
        'sizes (config.model.*, and its vocabulary / sequence length), or rename what differs.')
  loaded = tuple(n for n in ours if n in saved)
  if not loaded:
    raise ConfigError(f'config.init_from: no parameter of this model matches one in {state_dir} by '
                      f'name (it has {sorted(saved)[:5]}...; this model {sorted(ours)[:5]}...). '
                      'Is it a run of a related model?')
  return Plan(state_dir, step, loaded, tuple(n for n in saved if n not in ours),
              tuple(n for n in ours if n not in saved))


def read_params(state_dir: str, names: tuple[str, ...], like: dict[str, Any]) -> dict[str, Any]:
  """The named params as numpy arrays (a partial restore: nothing else is read)."""
  item, restore_args = {}, {}
  for name in names:
    node, args = item, restore_args
    *parents, leaf = name.split('/')
    for part in parents:
      node, args = node.setdefault(part, {}), args.setdefault(part, {})
    node[leaf] = jax.ShapeDtypeStruct(like[name].shape, like[name].dtype)
    args[leaf] = ocp.RestoreArgs(restore_type=np.ndarray, dtype=like[name].dtype)
  restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item={'params': item}, restore_args={'params': restore_args}, partial_restore=True))
  return {name: np.asarray(x) for name, x in flat_named(restored['params']).items()}


def apply(p: Plan, params: PyTree) -> PyTree:
  """`params` with the loaded ones replaced, each placed with the fresh array's sharding."""
  return place(params, read_params(p.state_dir, p.loaded, flat_named(params)))


def hf_values(config: ml_collections.ConfigDict, params: PyTree) -> hf.Loaded:
  """`init_from=hf:PATH`: the checkpoint's tensors as our params; ConfigError naming any tensor
  whose shape does not fit (`params` may be abstract: train.start checks before compute)."""
  ckpt = hf.open_checkpoint(hf.parse(config.init_from))
  shapes = {name: tuple(x.shape) for name, x in flat_named(params).items()}
  return hf.to_params(ckpt, complete_model_config(config.model), shapes)


def place(params: PyTree, values: dict[str, np.ndarray]) -> PyTree:
  """`params` with the named ones replaced (in their dtype), each with the fresh sharding."""
  def one(path, x):
    name = path_name(path)
    if name not in values:
      return x
    value = np.asarray(values[name]).astype(x.dtype)
    return jax.make_array_from_callback(x.shape, x.sharding, lambda index: value[index])

  return jax.tree_util.tree_map_with_path(one, params)


def _init_from_hf(config: ml_collections.ConfigDict, state, workdir: str):
  loaded = hf_values(config, state.params)
  if jax.process_index() == 0:
    print(loaded.describe(), flush=True)
    hf.keep_source(hf.parse(config.init_from), workdir)  # For --mode=export --format=hf.
    paths.get(paths.join(workdir, RECORD)).write_text(json.dumps(
        {'init_from': config.init_from, 'loaded': loaded.loaded, 'new': loaded.new,
         'left_out': loaded.left_out}, indent=2))
  return state.replace(params=place(state.params, loaded.values))


def init_from(config: ml_collections.ConfigDict, state, workdir: str):
  """The fresh train state with the pre-trained params of `config.init_from` (see module doc)."""
  if hf.parse(config.init_from):
    return _init_from_hf(config, state, workdir)
  p = plan(config.init_from, state.params)
  state = state.replace(params=apply(p, state.params))
  if jax.process_index() == 0:
    print(p.describe(), flush=True)
    paths.get(paths.join(workdir, RECORD)).write_text(
        json.dumps({'init_from': config.init_from, **dataclasses.asdict(p)}, indent=2))
  return state
