"""research/checkpointing.py on 8 fake CPU devices: a corrupt, partial or interrupted checkpoint is
reported and the older one used (or the run refused, deleting nothing); changed shapes are refused
naming the array; checksums see one changed element whatever the topology; a failed async save
(disk full) is raised with its message."""

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research import checkpointing
from research.errors import CheckpointError, ConfigError
from research.runtime import faults

CKPT = ml_collections.ConfigDict(dict(keep=3, best_metric='', best_mode='max', async_save=True))


def mesh_state(i, fsdp=True):
  mesh = jax.make_mesh((8,), ('fsdp',), axis_types=(jax.sharding.AxisType.Auto,))
  spec = P('fsdp') if fsdp else P()
  w = jax.random.normal(jax.random.key(i), (256, 256))  # Big enough for bytes mid-array.
  return {'w': jax.device_put(w, NamedSharding(mesh, spec)),
          'b': jax.device_put(jnp.full((16,), i, jnp.bfloat16), NamedSharding(mesh, P())),
          'step': jax.device_put(jnp.int32(i), NamedSharding(mesh, P())),
          'mask': jax.device_put(jnp.arange(8) % 2 == 0, NamedSharding(mesh, P()))}


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A workdir with complete checkpoints at steps 10 and 20."""
  workdir = tmp_path_factory.mktemp('ckpt')
  manager = checkpointing.make_manager(str(workdir), CKPT)
  for step in (10, 20):
    checkpointing.save(manager, step, mesh_state(step), {'step': step})
  checkpointing.wait(manager)
  manager.close()
  return str(workdir)


def biggest_file(step_dir):
  """The largest OCDBT data file (on a tie, the merged copy under state/d, which restore reads)."""
  files = glob.glob(f'{step_dir}/state/d/*') + glob.glob(f'{step_dir}/state/ocdbt.*/d/*')
  return max(files, key=os.path.getsize)


def truncate(step_dir):
  path = biggest_file(step_dir)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def garbage(step_dir):  # Same size, other bytes: Orbax alone restores this silently.
  path = biggest_file(step_dir)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b'\x13\x37' * 16)


def corrupt_json(step_dir):
  with open(os.path.join(step_dir, 'data', 'metadata'), 'w') as f:
    f.write('{"step": 2')


CORRUPTIONS = {  # kind: (corrupt step 20, text the report must contain)
    'truncated file': (truncate, '/20: ValueError'),
    'missing shard': (lambda d: os.remove(biggest_file(d)), '/20: ValueError'),
    'garbage bytes': (garbage, "checksum mismatch in 1 array(s) [\"['w']\"]"),
    'missing item': (lambda d: shutil.rmtree(os.path.join(d, 'data')), '/20/data is missing'),
    'garbage json': (corrupt_json, '/20/data/metadata is unreadable or not valid JSON'),
}


@pytest.mark.parametrize('kind', list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_is_reported_and_the_older_one_used(kind, saved, tmp_path,
                                                                      caplog):
  workdir = str(tmp_path / 'w')
  shutil.copytree(saved, workdir)
  corrupt, report = CORRUPTIONS[kind]
  corrupt(os.path.join(workdir, 'checkpoints', '20'))
  manager = checkpointing.make_manager(workdir, CKPT)
  step, state, position = checkpointing.restore_latest(manager, abstract(mesh_state(0)))
  manager.close()
  assert (step, position) == (10, {'step': 10})
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(mesh_state(10)), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
  assert any('step 20' in e and report in e for e in errors), errors


def test_leftover_temporary_folder_is_reported_removed_and_ignored(saved, tmp_path, caplog):
  workdir = str(tmp_path / 'w')
  shutil.copytree(saved, workdir)
  leftover = os.path.join(workdir, 'checkpoints', '30.orbax-checkpoint-tmp-1234')
  shutil.copytree(os.path.join(workdir, 'checkpoints', '20'), leftover)
  os.remove(biggest_file(leftover))
  manager = checkpointing.make_manager(workdir, CKPT)
  step, _, _ = checkpointing.restore_latest(manager, abstract(mesh_state(0)))
  manager.close()
  assert step == 20
  assert any('step 30 was interrupted' in r.getMessage() and leftover in r.getMessage()
             for r in caplog.records)
  assert not os.path.exists(leftover)


def test_no_restorable_checkpoint_refuses_to_start_over_and_deletes_nothing(saved, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(saved, workdir)
  for step in ('10', '20'):
    garbage(os.path.join(workdir, 'checkpoints', step))
  before = sorted(glob.glob(f'{workdir}/**', recursive=True))
  manager = checkpointing.make_manager(workdir, CKPT)
  with pytest.raises(CheckpointError, match=r'(?s)No checkpoint .* restores.*step 20.*step 10'):
    checkpointing.restore_latest(manager, abstract(mesh_state(0)))
  manager.close()
  assert sorted(glob.glob(f'{workdir}/**', recursive=True)) == before


def test_changed_shapes_are_refused_before_restore_naming_the_array(saved):
  manager = checkpointing.make_manager(saved, CKPT)
  wrong = abstract(mesh_state(0))
  wrong['w'] = jax.ShapeDtypeStruct((256, 64), jnp.float32, sharding=wrong['w'].sharding)
  with pytest.raises(ConfigError, match=r'w: saved \(256, 256\), now \(256, 64\)'):
    checkpointing.restore_latest(manager, wrong)
  manager.close()


def test_checksums_see_one_changed_element_and_ignore_the_topology():
  sharded, replicated = mesh_state(3, fsdp=True), mesh_state(3, fsdp=False)
  sums = checkpointing.state_checksums(sharded)
  assert sums == checkpointing.state_checksums(replicated)
  assert sums == checkpointing.state_checksums(jax.device_get(sharded))  # Host numpy too.
  changed = dict(sharded, w=sharded['w'].at[37, 5].add(1e-6))
  swapped = dict(sharded, b=sharded['b'].at[0].set(3.5))
  assert checkpointing.state_checksums(changed)["['w']"] != sums["['w']"]
  assert checkpointing.state_checksums(swapped)["['b']"] != sums["['b']"]


def test_async_save_errors_are_raised_with_the_disk_full_message(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), CKPT)
  checkpointing.save(manager, 1, mesh_state(1), {'step': 1})
  checkpointing.wait(manager)
  faults.Fault('enospc_in_save', 2).before_save(2)
  checkpointing.save(manager, 2, mesh_state(2), {'step': 2})  # Fails in the background.
  with pytest.raises(CheckpointError, match=r'Saving step 2 .* The newest complete checkpoint, '
                                            r'step 1, is intact\. The disk is full'):
    checkpointing.wait(manager)
  assert checkpointing.complete_steps(str(manager.directory)) == [1]


def test_polling_for_a_failed_async_save_never_deletes_the_older_step(tmp_path):
  # The loop polls at every log step. Polling must leave the error to Orbax's finalize thread,
  # which then skips deleting older steps (CI lost keep=1's only checkpoint when it did not).
  config = ml_collections.ConfigDict(dict(CKPT, keep=1))
  for attempt in range(3):
    manager = checkpointing.make_manager(str(tmp_path / str(attempt)), config)
    checkpointing.save(manager, 1, mesh_state(1), {'step': 1})
    checkpointing.wait(manager)
    faults.Fault('enospc_in_save', 2).before_save(2)
    checkpointing.save(manager, 2, mesh_state(2), {'step': 2})  # Fails in the background.
    with pytest.raises(CheckpointError, match='step 1, is intact. The disk is full'):
      while True:
        checkpointing.check_for_errors(manager)
    checkpointing.wait(manager)  # What the loop's exit does; the error was raised once.
    manager.close()
    assert checkpointing.complete_steps(str(manager.directory)) == [1]
