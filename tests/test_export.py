"""Export for inference: the StableHLO programs compute what the model computes (also in a process
that has only jax), the params file holds the checkpoint bit for bit, bad input fails clearly and
leaves the workdir as it was."""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import ml_dtypes
import numpy as np
import pytest
from conftest import REPO, run_launch

import experiments.mnist_mlp as mnist_mlp
import experiments.shakespeare_char as shakespeare_char
import experiments.sst2_encoder as sst2_encoder
from research import build, data, models
from research.data.spec import Meta
from research.errors import ConfigError, RunError
from research.models.decode import generate
from research.tools import export, inference
from research.tools.export_programs import PLATFORMS
from research.train import train_and_evaluate
from research.train_step import model_inputs

KINDS = ('mlp', 'lm', 'encoder')
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def tiny_config(kind: str, data_dir: str) -> ml_collections.ConfigDict:
  """4 steps. The MLP saves and evaluates at steps 2 and 4 (so `best` has a choice); the others
  once, at the end (their evaluations and saves take longer)."""
  if kind == 'mlp':
    c = mnist_mlp.get_config('smoke')
    c.model.widths = (32,)
  elif kind == 'lm':
    c = shakespeare_char.get_config('tiny')
    c.sample.num_tokens = 0
  else:
    c = sst2_encoder.get_config('tiny')
    c.data.length_buckets = ()  # One batch width: one train-step compile.
  c.data.data_dir = data_dir
  c.num_train_steps, c.batch_size = 4, 16
  c.log_every_steps = 2
  c.eval_every_steps = c.checkpoint_every_steps = 2 if kind == 'mlp' else 4
  c.optimizer.warmup_steps = 0
  c.checkpoint.best_metric, c.checkpoint.best_mode = 'loss', 'min'
  c.checkpoint.async_save = False
  c.progress_bar = False
  return c


class Run:
  """A trained workdir, its export (--checkpoint=best), and the reference: the model built from
  the dataset's own meta with the params restored from the checkpoint (no export code)."""

  def __init__(self, kind: str, workdir: str, data_dir: str):
    self.kind, self.workdir = kind, workdir
    self.config = tiny_config(kind, data_dir)
    train_and_evaluate(self.config, workdir)
    # The export's own check (each program against the model) runs for the MLP; the tests below
    # compare every kind more thoroughly, so the slower LM and encoder skip it.
    self.manifest = export.export_workdir(workdir, 'best', check=kind == 'mlp')
    self.export_dir = os.path.join(workdir, 'export')
    self.dataset = data.get_dataset(self.config, workdir=workdir)
    self.model = models.get_model(self.config.model, self.dataset.meta)
    example = {k: v[:1] for k, v in model_inputs(self.dataset.train_batch(0)).items()}
    self.step, self.params = build.restore_params(
        self.config, workdir, self.model, example, self.manifest['checkpoint']['step'])
    self.apply = jax.jit(lambda *args: self.model.apply({'params': self.params}, *args))

  @functools.cached_property
  def greedy(self) -> tuple[np.ndarray, np.ndarray]:
    """LM: (prompt_1xP 'ROMEO:', the 12 tokens greedy decoding adds), from decode.generate."""
    prompt = self.dataset.tokenizer.encode('ROMEO:')[None]
    return prompt, np.asarray(generate(self.model, self.params, prompt, jax.random.key(0),
                                       num_tokens=12, temperature=0.0))

  def program(self, name: str):
    with open(os.path.join(self.export_dir, name + export.PROGRAM_SUFFIX), 'rb') as f:
      return jax.export.deserialize(f.read())

  def inputs(self, batch: int, seed: int = 0, length: int | None = None) -> tuple:
    """Real eval inputs (rows of the eval split); token sequences cut to `length` positions."""
    rows = next(self.dataset.eval_batches())
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows['inputs']), batch, replace=False)
    arrays = tuple(rows[k][pick] for k in ('inputs', 'input_mask') if k in rows)
    if length and arrays[0].dtype.kind == 'i':  # Token ids: any length up to max_len.
      arrays = tuple(a[:, :length] for a in arrays)
    return arrays


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
  """kind -> Run, trained on first use and shared by the module's tests."""
  return functools.cache(
      lambda kind: Run(kind, str(tmp_path_factory.mktemp(f'export_{kind}')), data_dir))


def snapshot(workdir: str, skip: str = '') -> dict:
  """Every file under WORKDIR (but `skip`) with its size, mtime and content hash."""
  out = {}
  for root, _, files in os.walk(workdir):
    rel_root = os.path.relpath(root, workdir)
    if skip and (rel_root == skip or rel_root.startswith(skip + os.sep)):
      continue
    out[rel_root] = 'dir'
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digest = hashlib.sha1(f.read()).hexdigest()
      out[os.path.join(rel_root, name)] = (os.path.getsize(path), os.stat(path).st_mtime_ns,
                                           digest)
  return out


def assert_trees_identical(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


# --- The programs equal the model ----------------------------------------------------------------


@pytest.mark.parametrize('kind', KINDS)
def test_exported_programs_match_the_model_at_two_batch_sizes(runs, kind):
  run = runs(kind)
  programs = run.manifest['programs']
  assert all(p['platforms'] == list(PLATFORMS) for p in programs.values())
  assert programs['logits']['args'][0]['shape'][0] == 'b'  # A symbolic batch.
  if kind == 'mlp':  # The export checked itself against the model.
    assert programs['logits']['check']['max_abs_diff'] <= 1e-5
  logits = run.program('logits')
  for batch, length in ((2, None), (5, 9)):
    args = run.inputs(batch, seed=batch, length=length)
    got = logits.call(*args)
    np.testing.assert_allclose(got, run.apply(*args), **TOLERANCE)
  if kind != 'lm':
    return
  # KV-cache decoding driven from outside: prefill a prompt, then feed the sequence's own next
  # tokens one at a time; every step's logits equal the full forward pass at that position.
  prefill, decode_step = run.program('prefill'), run.program('decode_step')
  for batch in (1, 3):
    (tokens,) = run.inputs(batch, seed=10 + batch)
    full = run.apply(tokens)
    prompt = 5
    step_logits, cache = prefill.call(tokens[:, :prompt])
    np.testing.assert_allclose(step_logits, full[:, prompt - 1], **TOLERANCE)
    for pos in range(prompt, prompt + 4):
      step_logits, cache = decode_step.call(cache, tokens[:, pos], np.int32(pos))
      np.testing.assert_allclose(step_logits, full[:, pos], **TOLERANCE)


@pytest.mark.parametrize('kind', KINDS)
def test_params_file_holds_the_checkpoint_bit_for_bit(runs, kind):
  run = runs(kind)
  loaded = export.load_params(os.path.join(run.export_dir, export.PARAMS_FILE))
  assert_trees_identical(loaded, run.params)
  manifest = run.manifest
  assert manifest['params']['count'] == sum(x.size for x in jax.tree.leaves(run.params))
  assert manifest['params']['dtypes'] == {'float32': manifest['params']['count']}
  assert manifest['provenance']['config_hash']  # The run's provenance.json, carried over.
  assert manifest['checkpoint']['metrics']['loss'] > 0
  expected_files = {'config.json', 'manifest.json', export.PARAMS_FILE,
                    *(p['file'] for p in manifest['programs'].values()),
                    *manifest['model']['assets']}
  assert set(os.listdir(run.export_dir)) == expected_files
  if kind != 'mlp':
    assert 'vocab.json' in expected_files


@pytest.mark.parametrize('kind', KINDS)
def test_the_manifest_holds_the_meta_and_tokenizer_training_used(runs, kind):
  """Export reads the meta back from the workdir through the dataset's spec (no data loaded):
  it is the meta the training run built its model with."""
  run = runs(kind)
  assert Meta.from_json(run.manifest['model']['meta']) == run.dataset.meta
  spec = data.get_spec(run.config.data.name)
  assert run.manifest['model']['preprocess'] == spec.preprocess
  if run.dataset.tokenizer is not None:
    assert spec.load_tokenizer(run.export_dir) == run.dataset.tokenizer


def test_params_round_trip_is_exact(tmp_path):
  rng = np.random.default_rng(0)
  params = {'dense': {'kernel': rng.normal(size=(3, 4)).astype(np.float32),
                      'bias': np.array([np.nan, -0.0, np.inf], np.float32)},
            'embed': rng.normal(size=(5, 2)).astype(ml_dtypes.bfloat16),
            'count': np.arange(4, dtype=np.int32)}
  path = str(tmp_path / 'p.safetensors')
  export.save_params(path, params)
  assert_trees_identical(export.load_params(path), params)


# --- Only jax needed ---------------------------------------------------------------------------

STANDALONE = r'''
"""Runs an export with jax alone: no research package, no flax."""
import json, sys
import jax, numpy as np

def program(export_dir, name):
  with open(f'{export_dir}/{name}.jaxexport', 'rb') as f:
    return jax.export.deserialize(f.read())

def check(export_dir, arrays):
  task = json.load(open(f'{export_dir}/manifest.json'))['model']['task']
  logits = program(export_dir, 'logits')
  for b in (2, 5):
    args = [arrays[f'b{b}_arg{i}'] for i in range(int(arrays[f'b{b}_nargs']))]
    np.testing.assert_allclose(logits.call(*args), arrays[f'b{b}_logits'], rtol=1e-5, atol=1e-5)
  try:
    logits.call(*[a[:, None] for a in args])  # One axis too many.
    raise AssertionError('a wrong shape was accepted')
  except ValueError as e:
    assert 'mismatch' in str(e), e
  if task == 'lm':  # Greedy generation with the KV-cache programs.
    prompt = arrays['prompt']
    step_logits, cache = program(export_dir, 'prefill').call(prompt)
    decode_step, out = program(export_dir, 'decode_step'), []
    for pos in range(prompt.shape[1], prompt.shape[1] + arrays['greedy'].shape[1]):
      token = np.argmax(step_logits, -1).astype(np.int32)
      out.append(token)
      step_logits, cache = decode_step.call(cache, token, np.int32(pos))
    np.testing.assert_array_equal(np.stack(out, 1), arrays['greedy'])

for export_dir, data in zip(sys.argv[1::2], sys.argv[2::2]):
  check(export_dir, np.load(data))
assert 'research' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)
print('standalone ok', len(sys.argv) // 2)
'''


def test_programs_run_in_a_fresh_process_with_only_jax(runs, tmp_path):
  argv = []
  for kind in KINDS:
    run = runs(kind)
    arrays = {}
    for b in (2, 5):
      args = run.inputs(b, seed=b, length=None if b == 2 else 9)
      arrays.update({f'b{b}_nargs': len(args), f'b{b}_logits': np.asarray(run.apply(*args)),
                     **{f'b{b}_arg{i}': a for i, a in enumerate(args)}})
    if kind == 'lm':
      arrays['prompt'], arrays['greedy'] = run.greedy
    np.savez(tmp_path / f'{kind}.npz', **arrays)
    argv += [run.export_dir, str(tmp_path / f'{kind}.npz')]
  (tmp_path / 'standalone.py').write_text(STANDALONE)
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'XLA_FLAGS')}
  result = subprocess.run([sys.executable, 'standalone.py', *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'standalone ok {len(KINDS)}' in result.stdout


# --- Checkpoint choice; the workdir is left alone ------------------------------------------------


def test_latest_best_and_a_step_export_that_checkpoint(runs, tmp_path):
  run = runs('mlp')
  workdir = str(tmp_path / 'run')
  shutil.copytree(run.workdir, workdir)
  before = snapshot(workdir, skip='export')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = {r['step']: r['loss'] for r in map(json.loads, f) if r.get('split') == 'eval'}
  assert sorted(evals) == [2, 4]
  for which, step in (('2', 2), ('latest', 4), ('best', min(evals, key=evals.get))):
    manifest = export.export_workdir(workdir, which)
    assert manifest['checkpoint']['step'] == step
    assert manifest['checkpoint']['metrics']['loss'] == pytest.approx(evals[step])
    _, params = build.restore_params(run.config, workdir, run.model,
                                             {'inputs': run.inputs(1)[0]}, step)
    assert_trees_identical(export.load_params(os.path.join(workdir, 'export',
                                                           export.PARAMS_FILE)), params)
  assert snapshot(workdir, skip='export') == before
  assert not [n for n in os.listdir(workdir) if n.startswith('.export')]


def test_bad_input_fails_clearly_and_changes_nothing(runs, tmp_path):
  run = runs('mlp')
  workdir = run.workdir
  before = snapshot(workdir)
  for which, message in (('999', 'there is no step 999'), ('newest', 'not latest, best or a step')):
    with pytest.raises(ConfigError, match=message):
      export.export_workdir(workdir, which)
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  shutil.copy(os.path.join(workdir, 'config.json'), untrained)
  with pytest.raises(ConfigError, match='No checkpoint in .*train first'):
    export.export_workdir(str(untrained), 'latest')
  with pytest.raises(ConfigError, match='config.json is missing'):
    export.export_workdir(str(tmp_path), 'latest')
  no_best = tmp_path / 'no_best'
  shutil.copytree(workdir, no_best)
  config = json.loads((no_best / 'config.json').read_text())
  config['checkpoint']['best_metric'] = ''
  (no_best / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ConfigError, match='no step is "best"'):
    export.export_workdir(str(no_best), 'best')
  assert snapshot(workdir) == before
  assert sorted(os.listdir(untrained)) == ['config.json']

  # The same through launch.py: `error: ...` and exit 2.
  for args, message in (([f'--workdir={workdir}', '--checkpoint=7'], 'no step 7'),
                        ([f'--workdir={untrained}'], 'No checkpoint in')):
    result = run_launch(['--mode=export', *args])
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'error: ' in result.stderr and message in result.stderr
  assert snapshot(workdir) == before
  assert sorted(os.listdir(untrained)) == ['config.json']


def test_a_failed_export_keeps_the_previous_one(runs, monkeypatch):
  run = runs('mlp')
  before = snapshot(run.workdir)

  def differs(*args):
    raise RunError('The exported logits program differs from the model')

  monkeypatch.setattr(export, 'check_program', differs)
  with pytest.raises(RunError, match='differs'):
    export.export_workdir(run.workdir, 'latest')
  assert snapshot(run.workdir) == before  # The old export/ intact, no temporary folder left.


# --- research.inference ---------------------------------------------------------------------


@pytest.mark.parametrize('kind', KINDS)
def test_inference_load_predicts_like_the_model(runs, kind, tmp_path):
  run = runs(kind)
  model = inference.load(run.export_dir)
  args = run.inputs(6, seed=3)
  want = np.asarray(run.apply(*args)).argmax(-1)
  if kind == 'mlp':
    np.testing.assert_array_equal(model.predict(args[0]), want)
    with pytest.raises(ConfigError, match=r'takes shape \(b, 28, 28, 1\).*got \(6, 28, 28\)'):
      model.predict(args[0][..., 0])
    np.save(tmp_path / 'bad.npy', args[0][:, :27])
    result = subprocess.run([sys.executable, '-m', 'research.tools.inference', run.export_dir,
                             f'--images={tmp_path / "bad.npy"}'], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and 'error: inputs: the exported model takes shape' in \
        result.stderr, result.stderr[-2000:]
  elif kind == 'encoder':
    vocab = run.dataset.tokenizer
    texts = [vocab.decode(ids[mask.astype(bool)]) for ids, mask in zip(*args, strict=True)]
    assert model.classify(texts) == [model.labels[i] for i in want]
    assert model.labels == ['negative', 'positive']
  else:
    assert model.generate('ROMEO:', num_tokens=12, temperature=0.0) == \
        run.dataset.tokenizer.decode(run.greedy[1][0])
    with pytest.raises(ConfigError, match='more than the 32 positions'):
      model.logits(inputs=np.zeros((1, 33), np.int32))
