"""Orbax checkpoints under WORKDIR/checkpoints: the train state plus the input position.

Keeps the newest `keep` steps plus the best by an eval metric. Restore always targets an abstract
state built for the current devices (shapes, dtypes and shardings), so a checkpoint written on one
topology restores onto another.

Nothing here loses work:
  * A step becomes visible only when Orbax renames its finished temporary folder, and old steps
    are deleted only after a newer one is finalized, so a kill mid-save leaves the previous
    checkpoint intact (a leftover `<step>.orbax-checkpoint-tmp` folder is reported and removed).
  * Each save stores a checksum of every state array in its JSON item. Orbax does not notice
    overwritten bytes inside its data files (zstd chunks carry no checksum), so restore recomputes
    and compares them: a corrupt, truncated or incomplete step is reported with its step, folder
    and cause, and the next older step is used. If no step restores, the run refuses to start
    from scratch (which would delete the checkpoints in time).
  * Errors of asynchronous saves surface as CheckpointError (disk full named as such) at the next
    save, log point or exit, never swallowed.
"""

from __future__ import annotations

import errno
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from research import paths
from research.errors import CheckpointError, ConfigError

PyTree = Any
CHECKSUMS = 'state_checksums'  # Key in the JSON data item.
TMP_SUFFIX = re.compile(r'^(\d+)\.orbax-checkpoint-tmp')


def make_manager(workdir: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  policies = ocp.checkpoint_managers
  keep = [policies.LatestN(n=cfg.keep)]
  if cfg.best_metric:
    keep.append(policies.BestN(get_metric_fn=lambda m: m[cfg.best_metric],
                               reverse=cfg.best_mode == 'min', n=1,
                               keep_checkpoints_without_metrics=False))
  # best_fn also makes Orbax write each step's metrics to disk (without it they live only in
  # memory): BestN after a resume and `best_step()` for export need them.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy(keep),
      best_fn=(lambda m: m[cfg.best_metric]) if cfg.best_metric else None,
      best_mode=cfg.best_mode,
      enable_async_checkpointing=cfg.async_save, create=True, cleanup_tmp_directories=True)
  directory = paths.join(paths.absolute(workdir), 'checkpoints')
  report_leftovers(directory)
  # Handlers named up front (not just item names) so step metadata can be read before a restore.
  return ocp.CheckpointManager(
      directory, options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()})


def open_reader(workdir: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """A read-only manager for a finished run: creates, cleans and deletes nothing in WORKDIR.

  `best_fn` is set (from checkpoint.best_metric) so `best_step()` ranks the steps by the eval
  metrics saved with them; without a best_metric it is the latest step.
  """
  best = cfg.get('best_metric') or None
  options = ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0, cleanup_tmp_directories=False,
      best_fn=(lambda m: m[best]) if best else None, best_mode=cfg.get('best_mode') or 'max')
  return ocp.CheckpointManager(
      paths.join(paths.absolute(workdir), 'checkpoints'), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()})


def report_leftovers(directory: str) -> None:
  """Names the temporary folders of interrupted saves (Orbax removes them when it starts)."""
  if not paths.isdir(directory) or jax.process_index() != 0:
    return
  for name in sorted(paths.listdir(directory)):
    match = TMP_SUFFIX.match(name)
    if match:
      logging.warning('Checkpoint step %s was interrupted while being saved: removing its '
                      'temporary folder %s (it never became a checkpoint).', match.group(1),
                      os.path.join(directory, name))


# --- Checksums -------------------------------------------------------------------------------


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """sum(bits_i * odd_i) mod 2^32, odd_i from the element index: any changed element changes it.

  Index arithmetic per dimension (no reshape) keeps the input's sharding, so FSDP-sharded state
  is never gathered; integer sums are exact in any order, so every topology gets the same value.
  """
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    width = {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize, jnp.uint32)
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)  # 8-byte: (..., 2).
  index, stride = jnp.zeros(bits.shape, jnp.uint32), 1
  for dim in reversed(range(bits.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim) * np.uint32(stride)
    stride = (stride * bits.shape[dim]) % 2**32
  odd = index * np.uint32(0x9E3779B1) | np.uint32(1)
  return jnp.sum(bits * odd, dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def state_checksums(state: PyTree) -> dict[str, int]:
  """{leaf path: uint32 checksum} of a (possibly sharded, multi-process) state."""
  sums = jax.tree.leaves(_checksums(state))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  return {p: int(np.asarray(s.addressable_data(0))) for p, s in zip(paths, sums, strict=True)}


def verify_checksums(state: PyTree, saved: dict | None, step_dir: str) -> None:
  if saved is None:
    logging.warning('%s has no state checksums (written by an older version): not verified.',
                    step_dir)
    return
  got = state_checksums(state)
  bad = [p for (p, a), b in zip(saved.items(), got.values(), strict=False) if a != b]
  if len(saved) != len(got) or bad:
    raise CheckpointError(f'state checksum mismatch in {len(bad)} array(s) {bad[:3]} '
                          f'(files under {os.path.join(step_dir, "state")} are corrupt)')


# --- Save ------------------------------------------------------------------------------------


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, data_position: dict,
         metrics: dict | None = None) -> None:
  data = dict(data_position, **{CHECKSUMS: state_checksums(state)})
  try:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data)),
                 metrics=metrics)
  except Exception as e:  # Includes the previous async save's error, raised here.
    raise save_error(manager, e) from e


def check_for_errors(manager: ocp.CheckpointManager) -> None:
  """Raises a finished async save's error now (cheap: never waits for a save in flight).

  Asks the manager, once its save is over, not `manager.check_for_errors()`: that takes the
  error away from Orbax's own finalize thread, which then deletes the older steps as if the
  save had worked (keep=1 lost its only checkpoint that way).
  """
  if not manager.is_saving_in_progress():
    wait(manager)  # Returns at once, or raises the failed save's error.


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until async saves are on disk; raises their errors."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise save_error(manager, e) from e


def complete_steps(directory: str) -> list[int]:
  """Steps whose folder exists under their final name: finished saves (Orbax renames at the end)."""
  if not paths.isdir(directory):
    return []
  return sorted(int(n) for n in paths.listdir(directory) if n.isdigit())


def steps_in_progress(directory: str) -> list[int]:
  """Steps with a temporary folder: a save in flight, or one a kill interrupted."""
  if not paths.isdir(directory):
    return []
  return sorted(int(m.group(1)) for n in paths.listdir(directory)
                if (m := TMP_SUFFIX.match(n)))


def _is_disk_full(e: BaseException | None) -> bool:
  while e is not None:
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or 'No space left' in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def save_error(manager: ocp.CheckpointManager, e: BaseException) -> CheckpointError:
  directory = str(manager.directory)
  steps = complete_steps(directory)
  pending = steps_in_progress(directory)
  what = f'step {pending[-1]}' if pending else 'a checkpoint'
  cause = ('The disk is full: free space (or lower config.checkpoint.keep), then ' if
           _is_disk_full(e) else 'Fix the cause, then ')
  kept = (f'The newest complete checkpoint, step {steps[-1]}, is intact.' if steps else
          'There is no complete checkpoint yet.')
  return CheckpointError(f'Saving {what} under {directory} failed ({type(e).__name__}: '
                         f'{_first_line(e)}). {kept} {cause}re-run the same command to resume.')


# --- Restore ---------------------------------------------------------------------------------


def abstract_like(state: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs carrying the *current* shardings: the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def check_shapes(manager: ocp.CheckpointManager, step: int, abstract_state: PyTree) -> None:
  """ConfigError naming the arrays whose saved shape differs from the current model's.

  A shape change is a config mistake, not corruption: falling back to older steps would fail the
  same way, so it is refused before any restore or compute.
  """
  try:
    saved = manager.item_metadata(step)['state']
    saved_leaves = jax.tree_util.tree_leaves_with_path(saved)
  except Exception:  # noqa: BLE001 - unreadable metadata: the restore loop reports the step.
    return
  saved_shapes = {_names(p): tuple(m.shape) for p, m in saved_leaves}
  bad = [f'{"/".join(_names(p))}: saved {saved_shapes[_names(p)]}, now {tuple(x.shape)}'
         for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)
         if _names(p) in saved_shapes and saved_shapes[_names(p)] != tuple(x.shape)]
  if bad:
    raise ConfigError(f'The checkpoint at step {step} in {manager.directory} has other shapes '
                      f'than this config builds:\n  ' + '\n  '.join(bad[:10]) +
                      '\nUse a new --workdir, or the config that wrote it.')


def _names(path: tuple) -> tuple[str, ...]:
  """A tree path as plain names: saved metadata has dict keys where the state has attributes."""
  return tuple(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: PyTree,
                   step: int | None = None) -> tuple[int, PyTree, dict] | None:
  """(step, state, data_position) of the newest step that restores cleanly, or None if none."""
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    steps = [s for s in steps if s == step]
  if not steps:
    return None
  check_shapes(manager, steps[0], abstract_state)
  failures = []
  for s in steps:
    step_dir = os.path.join(str(manager.directory), str(s))
    try:
      restored = manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      position = dict(restored['data'])
      verify_checksums(restored['state'], position.pop(CHECKSUMS, None), step_dir)
    except Exception as e:  # noqa: BLE001 - any failure means this step is unusable.
      failures.append(f'step {s}: {diagnose(step_dir, e)}')
      logging.error('Checkpoint %s. Trying an older one.', failures[-1])
      continue
    if failures:
      logging.warning('Resuming from step %d, the newest good checkpoint; skipped:\n  %s', s,
                      '\n  '.join(failures))
    return s, restored['state'], position
  raise CheckpointError(
      f'No checkpoint under {manager.directory} restores:\n  ' + '\n  '.join(failures) +
      '\nRefusing to start from scratch in this workdir (new saves would delete these). Move '
      'the checkpoints folder away to start over.')


def diagnose(step_dir: str, e: BaseException) -> str:
  """A one-line reason naming the file or folder at fault, when it can be found."""
  problem = _file_problem(step_dir)
  cause = f'{type(_root(e)).__name__}: {_first_line(_root(e))}'
  return f'{problem}; {cause}' if problem else f'{step_dir}: {cause}'


def _file_problem(step_dir: str) -> str | None:
  for item in ('state', 'data'):
    if not os.path.isdir(os.path.join(step_dir, item)):
      return f'{os.path.join(step_dir, item)} is missing'
  for name in ('data/metadata', 'state/_METADATA', '_CHECKPOINT_METADATA'):
    path = os.path.join(step_dir, name)
    try:
      with open(path) as f:
        json.load(f)
    except FileNotFoundError:
      if name != '_CHECKPOINT_METADATA':  # Optional for Orbax.
        return f'{path} is missing'
    except (OSError, ValueError):
      return f'{path} is unreadable or not valid JSON (truncated or overwritten)'
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      if os.path.getsize(os.path.join(root, name)) == 0:
        return f'{os.path.join(root, name)} is empty (truncated)'
  return None


def _root(e: BaseException) -> BaseException:
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  return e


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else repr(e))[:600]
