"""How the state and batches are laid out on devices: the jit + Mesh path and the pmap path.

jit (default): one mesh over every device of every process with axes (data, fsdp, tensor).
Parameters carry logical axis names (`nn.with_logical_partitioning` in the models); `RULES` maps
them to mesh axes, so `fsdp` shards parameters and optimizer state (ZeRO-3) and `tensor` shards
heads and MLP hidden units (Megatron). The batch is split over (data, fsdp). Inside the step the
params are constrained to their sharding without `fsdp` (`compute_sharding`): weights are
all-gathered for use, activations stay batch-sharded.

pmap: the state is replicated with a leading local-device axis and the batch split over it.

Checkpoints always hold the plain (global) state, so either path restores the other's files.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.config_checks import suggest
from research.errors import ConfigError

PyTree = Any
MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
PMAP_AXIS = 'batch'
RULES = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('vocab', None),
    ('classes', None),
    ('head_dim', None),
    ('length', None),
    ('norm', None),
    ('layers', None),
)


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """Resolves `config.parallel.{data,fsdp,tensor}`; one of them may be -1 (the rest)."""
  sizes = [cfg.data, cfg.fsdp, cfg.tensor]
  if (sizes.count(-1) > 1 or any(not isinstance(s, int) or isinstance(s, bool) for s in sizes)
      or any(s == 0 or s < -1 for s in sizes)):
    raise ConfigError(f'config.parallel data/fsdp/tensor = {sizes}: each must be a positive size, '
                      'and at most one may be -1 (all remaining devices).')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f'config.parallel sizes {sizes} do not divide the {num_devices} devices.')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'config.parallel data*fsdp*tensor = {"*".join(map(str, sizes))} = '
                      f'{math.prod(sizes)}, but there are {num_devices} devices. Make the product '
                      'equal the device count, or set one size to -1.')
  return tuple(sizes)


def make_mesh(cfg: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: every device of every process)."""
  devices = devices if devices is not None else jax.devices()
  shape = mesh_shape(cfg, len(devices))
  # Auto axes: sharding propagates through the model as in pre-0.7 JAX (make_mesh defaults to
  # Explicit axes now, which would require explicit shardings on every intermediate).
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def logical_state_shardings(boxed_abstract_state: PyTree, mesh: Mesh) -> PyTree:
  """NamedShardings for the (unboxed) TrainState, from the logical names on its parameters.

  Optimizer moments are built by mapping over the boxed params, so they inherit the params' names
  and get the same shardings (Adam's mu/nu are ZeRO-3 sharded like their params). Leaves that
  inherited names but not the shape (Adafactor's factored rows/columns, shape-(1,) placeholders)
  are small and replicated instead.
  """
  abstract = nn.unbox(boxed_abstract_state)
  specs = nn.get_partition_spec(boxed_abstract_state)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, RULES)
  check_divisible(abstract.params, shardings.params)
  replicated = NamedSharding(mesh, P())
  opt_shardings = jax.tree.map(lambda x, s: s if _fits(x.shape, s) else replicated,
                               abstract.opt_state, shardings.opt_state)
  return shardings.replace(opt_state=opt_shardings)


def _sharded_sizes(shape: tuple[int, ...], sharding: NamedSharding) -> list[tuple[int, tuple, int]]:
  """(dim, mesh axes, number of shards) for each dimension the spec names."""
  out = []
  for dim, axes in zip(shape, sharding.spec, strict=False):  # Unnamed trailing dims: whole.
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    out.append((dim, axes, math.prod(sharding.mesh.shape[a] for a in axes)))
  return out


def _fits(shape: tuple[int, ...], sharding: NamedSharding) -> bool:
  return len(sharding.spec) <= len(shape) and all(
      dim % n == 0 for dim, _, n in _sharded_sizes(shape, sharding))


def check_divisible(abstract: PyTree, shardings: PyTree) -> None:
  """Every sharded dimension must divide by its mesh axes: name the parameter if not."""
  for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(abstract),
                                    jax.tree.leaves(shardings), strict=True):
    for dim, axes, size in _sharded_sizes(leaf.shape, sharding):
      if dim % size:
        raise ConfigError(
            f'params{jax.tree_util.keystr(path)} has shape {leaf.shape}: its dimension {dim} is '
            f'sharded over mesh axes {axes} of total size {size} and does not divide. Change the '
            'model size (heads, kv-heads, d_ff, widths) or config.parallel.')


@dataclasses.dataclass(frozen=True)
class Layout:
  """The chosen strategy's placement functions; the train loop calls only these."""

  strategy: str
  mesh: Mesh  # jit: (data, fsdp, tensor); pmap: the local devices on one axis.
  state_sharding: PyTree  # Shardings of the global (checkpointed) state.
  batch_sharding: NamedSharding
  data_parallel: int  # How many ways the global batch is split.

  def put_batch(self, local_batch: dict) -> dict:
    """This process's rows of the global batch -> device arrays in the strategy's layout."""
    if self.strategy == 'pmap':
      n = self.mesh.size
      return jax.device_put({k: v.reshape((n, -1) + v.shape[1:]) for k, v in local_batch.items()},
                            self.batch_sharding)
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local_batch.items()}

  def to_strategy(self, state: PyTree) -> PyTree:
    """Global state (as checkpointed) -> the layout the compiled step takes."""
    if self.strategy != 'pmap':
      return state
    return jax.tree.map(lambda x: _stack_local_copies(x, self.batch_sharding), state)

  def abstract_step_args(self, state: PyTree, batch: dict) -> tuple[PyTree, dict]:
    """ShapeDtypeStructs of the global state and batch -> what the compiled step takes (for
    compiling ahead of time without allocating anything)."""
    if self.strategy == 'pmap':
      n = self.mesh.size  # Every local device: a full copy of the state, 1/n of the local rows.
      state = jax.tree.map(lambda x: jax.ShapeDtypeStruct((n,) + x.shape, x.dtype), state)
      batch = {k: jax.ShapeDtypeStruct((n, v.shape[0] // jax.device_count()) + v.shape[1:],
                                       v.dtype) for k, v in batch.items()}
      return state, batch
    return state, {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
                   for k, v in batch.items()}

  def device_shardings(self, state: PyTree) -> PyTree:
    """How one device holds each leaf of the global state (pmap: a whole replica)."""
    if self.strategy != 'pmap':
      return self.state_sharding
    return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), state)

  def to_global(self, state: PyTree) -> PyTree:
    """The compiled step's layout -> global state (for checkpoints and export)."""
    if self.strategy != 'pmap':
      return state
    return jax.tree.map(_first_local_copy, state, self.state_sharding)


def _stack_local_copies(x: jax.Array, sharding: NamedSharding) -> jax.Array:
  shards = {s.device: s.data for s in x.addressable_shards}
  devices = sharding.mesh.devices.reshape(-1)
  arrays = [jax.device_put(shards.get(d, x.addressable_data(0)), d)[None] for d in devices]
  return jax.make_array_from_single_device_arrays((len(devices),) + x.shape, sharding, arrays)


def _first_local_copy(x: jax.Array, sharding: NamedSharding) -> jax.Array:
  copies = {s.device: s.data[0] for s in x.addressable_shards}
  devices = [d for d in sharding.mesh.devices.reshape(-1) if d.process_index == jax.process_index()]
  return jax.make_array_from_single_device_arrays(x.shape[1:], sharding,
                                                  [copies[d] for d in devices])


def make_layout(cfg: ml_collections.ConfigDict, boxed_abstract_state: PyTree,
                global_batch: int, devices: list | None = None) -> Layout:
  """The layout for `config.parallel`; `devices` (jit only) picks a subset, e.g. in tests."""
  if cfg.strategy not in ('jit', 'pmap'):
    raise ConfigError(f'config.parallel.strategy={cfg.strategy!r} is not one of jit, pmap.'
                      f'{suggest(str(cfg.strategy), ["jit", "pmap"])}')
  if cfg.strategy == 'pmap':
    if devices is not None:
      raise ValueError('pmap always runs on every local device of every process.')
    if cfg.fsdp != 1 or cfg.tensor != 1:
      raise ConfigError(f'config.parallel.strategy=pmap replicates the state: fsdp={cfg.fsdp} '
                        f'and tensor={cfg.tensor} need strategy=jit (or set both to 1).')
    if global_batch % jax.device_count():
      raise ConfigError(
          f'batch size {global_batch} does not divide over {jax.device_count()} devices: pmap '
          f'gives each of the {jax.process_count()} process(es) {global_batch} / '
          f'{jax.process_count()} rows and splits them over its {jax.local_device_count()} local '
          'devices. Use a multiple of the device count.')
    local = Mesh(np.array(jax.local_devices()), (PMAP_AXIS,))
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ('replica',)), P())
    abstract = nn.unbox(boxed_abstract_state)
    return Layout('pmap', local, jax.tree.map(lambda _: replicated, abstract),
                  NamedSharding(local, P(PMAP_AXIS)), jax.device_count())
  mesh = make_mesh(cfg, devices)
  check_process_rows(np.vectorize(lambda d: d.process_index, otypes=[int])(mesh.devices),
                     jax.process_count())
  data_parallel = mesh.shape['data'] * mesh.shape['fsdp']
  if global_batch % data_parallel:
    raise ConfigError(
        f'batch size {global_batch} does not divide over the data-parallel size {data_parallel} '
        f'(mesh data={mesh.shape["data"]} x fsdp={mesh.shape["fsdp"]}); the batch is split over '
        'both. Use a multiple of it, or change config.parallel.')
  return Layout('jit', mesh, logical_state_shardings(boxed_abstract_state, mesh),
                NamedSharding(mesh, P(BATCH_AXES)), data_parallel)


def check_process_rows(process_of_device: np.ndarray, process_count: int) -> None:
  """jit: every process loads its own contiguous 1/process_count of the global batch's rows
  (data.pipeline.process_rows) and hands them to `make_array_from_process_local_data`, so its
  devices must hold exactly those rows and no other process's. `process_of_device`: the process
  of each mesh device, shaped (data, fsdp, tensor). Batch shard s (of data x fsdp, row-major) holds
  the s-th block of rows; process p must hold shards p*q .. (p+1)*q - 1, q = shards / processes.
  Otherwise (e.g. data=1, tensor spanning two processes) each process would supply only part of
  the rows its devices need, and JAX would silently assemble a wrong batch."""
  data, fsdp, tensor = process_of_device.shape
  shards = data * fsdp
  if shards % process_count:
    raise ConfigError(
        f'config.parallel data={data} x fsdp={fsdp} splits the batch {shards} way(s), but each of '
        f'the {process_count} processes loads its own 1/{process_count} of the rows: data x fsdp '
        f'must be a multiple of the process count {process_count} (tensor={tensor} copies the '
        'same rows). Raise data or fsdp (and lower tensor), or run fewer processes.')
  want = np.repeat(np.arange(process_count), shards // process_count)[:, None]
  if not np.all(process_of_device.reshape(shards, tensor) == want):
    raise ConfigError(
        f'The (data={data}, fsdp={fsdp}, tensor={tensor}) mesh puts devices of one process on '
        'batch rows another process loads (device order: process of each device = '
        f'{process_of_device.reshape(-1).tolist()}). Each process\'s devices must form a '
        'contiguous block of the data x fsdp axes; change config.parallel.')


def compile_steps(layout: Layout, train_step, eval_step):
  """Wraps the shared step bodies for the strategy: (train_step(state, batch), eval_step(p, b))."""
  if layout.strategy == 'pmap':
    p_train = jax.pmap(functools.partial(train_step, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                       donate_argnums=0)
    p_eval = jax.pmap(functools.partial(eval_step, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS)
    return p_train, lambda params, batch: jax.tree.map(lambda x: x[0], p_eval(params, batch))
  j_train, j_eval = jit_steps(layout, train_step, eval_step)
  return under_mesh(layout, j_train), under_mesh(layout, j_eval)


def compute_sharding(layout: Layout) -> PyTree | None:
  """Where the params live while the model runs: their shardings without `fsdp` (still split
  over `tensor`). ZeRO-3 gathers each weight for its use; None when fsdp is 1 (nothing to do)."""
  if layout.strategy != 'jit' or layout.mesh.shape['fsdp'] == 1:
    return None

  def drop_fsdp(axes):
    if axes == 'fsdp':
      return None
    if isinstance(axes, tuple):
      return tuple(a for a in axes if a != 'fsdp') or None
    return axes

  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(*map(drop_fsdp, s.spec))),
                      layout.state_sharding.params)


def jit_steps(layout: Layout, train_step, eval_step):
  """The jitted steps with explicit shardings; the state is donated (updated in place)."""
  gathered = compute_sharding(layout)
  train_step = functools.partial(train_step, compute_sharding=gathered)
  eval_step = functools.partial(eval_step, compute_sharding=gathered)
  replicated = NamedSharding(layout.mesh, P())
  j_train = jax.jit(train_step, in_shardings=(layout.state_sharding, layout.batch_sharding),
                    out_shardings=(layout.state_sharding, replicated), donate_argnums=0)
  j_eval = jax.jit(eval_step, in_shardings=(layout.state_sharding.params, layout.batch_sharding),
                   out_shardings=replicated)
  return j_train, j_eval


def mesh_context(layout: Layout):
  """The mesh in context while tracing, so a model may pin an activation's layout with a bare
  `jax.lax.with_sharding_constraint(x, P(BATCH_AXES))`. (Not `nn.logical_axis_rules`: under
  those, flax re-traces DenseGeneral's kernel init with a constraint of the wrong rank.)"""
  return jax.set_mesh(layout.mesh)


def under_mesh(layout: Layout, fn):
  """`fn` called, and `fn.lower`ed (for ahead-of-time compiling), with the mesh in context."""
  @functools.wraps(fn)
  def call(*args):
    with mesh_context(layout):
      return fn(*args)

  def lower(*args):
    with mesh_context(layout):
      return fn.lower(*args)

  call.lower = lower
  return call


def one_program_in_flight() -> bool:
  """Whether to block after each step: several CPU devices in one process (fake test devices).

  They share the host's small thread pool: with programs queued ahead, threads blocked in one
  program's all-reduce starve a device still running the previous one and XLA deadlocks
  (measured: 8 fake devices on 2 cores hang within the first steps without this).
  """
  return jax.local_device_count() > 1 and jax.local_devices()[0].platform == 'cpu'


def describe(layout: Layout) -> str:
  """The preflight line: who this process is, what it sees, how the work is split."""
  mesh = ' x '.join(f'{k}={v}' for k, v in layout.mesh.shape.items())
  return (f'preflight: process {jax.process_index()}/{jax.process_count()}, '
          f'{jax.local_device_count()} local / {jax.device_count()} global devices '
          f'({jax.devices()[0].platform}), strategy {layout.strategy}, mesh {mesh} '
          f'({layout.mesh.size} devices), batch split {layout.data_parallel} ways')
