"""`launch.py` on data no module of research/ knows: a TFDS dataset built here in a temp data dir,
and the experiment file's own get_data; each trains a few steps by config alone, and a bad name or
get_data fails with one `error:` line, exit 2, before anything is written."""

import json
import os

import pytest
from conftest import require_shared_data, run_launch
from helpers import store_toy_tfds

SMOKE = ['--config=experiments/mnist_mlp.py:smoke', '--config.num_train_steps=6',
         '--config.batch_size=8', '--config.eval_batch_size=4', '--config.log_every_steps=3',
         '--config.eval_every_steps=6', '--config.checkpoint_every_steps=6',
         '--config.model.widths=(16,)', '--config.progress_bar=False',
         '--config.checkpoint.async_save=False']


def errors_of(result):
  return [x for x in (result.stdout + result.stderr).splitlines() if x.startswith('error:')]


@pytest.fixture(scope='module')
def new_dataset_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  store_toy_tfds(data_dir, 'brand_new_shapes')
  return data_dir


def test_a_new_tfds_dataset_trains_and_exports_by_config_alone(tmp_path, new_dataset_dir):
  data_dir = new_dataset_dir
  workdir = tmp_path / 'run'
  args = [*SMOKE, f'--workdir={workdir}', '--config.data.name=brand_new_shapes',
          f'--config.data.data_dir={data_dir}', '--config.data.manual_dir=',
          '--config.data.preprocess=value_range(0, 1)|random_crop(6, pad=1)|flip_lr']
  result = run_launch(args)
  assert result.returncode == 0, result.stderr[-3000:]
  evals = [json.loads(line) for line in open(workdir / 'metrics.jsonl')
           if '"eval"' in line]
  assert evals and evals[-1]['step'] == 6 and 0 <= evals[-1]['accuracy'] <= 1
  facts = json.load(open(workdir / 'dataset.json'))
  assert facts['meta'] == {'task': 'classification', 'num_classes': 3, 'input_shape': [6, 6, 3]}
  exported = run_launch(['--mode=export', f'--workdir={workdir}'])
  assert exported.returncode == 0, exported.stderr[-3000:]
  manifest = json.load(open(workdir / 'export' / 'manifest.json'))
  assert manifest['model']['labels'] == ['left', 'middle', 'right']
  assert os.path.exists(workdir / 'export' / 'dataset.json')


def test_augmented_training_resumes_exactly(tmp_path, new_dataset_dir):
  """Random crops and flips are a function of (seed, step, row): 3 steps, then 3 more after a
  restart, log the same metrics as 6 steps straight."""
  args = [*SMOKE, '--config.data.name=brand_new_shapes', '--config.data.manual_dir=',
          f'--config.data.data_dir={new_dataset_dir}', '--config.checkpoint_every_steps=3',
          '--config.data.preprocess=value_range(0, 1)|random_crop(6, pad=1)|flip_lr']
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  for workdir, steps in ((straight, [6]), (resumed, [3, 6])):
    for n in steps:
      result = run_launch([*args, f'--workdir={workdir}', f'--config.num_train_steps={n}'])
      assert result.returncode == 0, result.stderr[-3000:]

  def train_metrics(workdir):
    rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
    return {r['step']: r for r in rows if r['split'] == 'train'}

  assert train_metrics(straight)[6] == train_metrics(resumed)[6]


def test_a_text_feature_of_a_new_tfds_dataset_trains_a_language_model(tmp_path,
                                                                       new_dataset_dir):
  args = ['--config=experiments/shakespeare_char.py:tiny', f'--workdir={tmp_path}',
          '--config.data.name=brand_new_shapes', f'--config.data.data_dir={new_dataset_dir}',
          '--config.data.inputs=caption', '--config.data.targets=', '--config.data.block_size=8',
          '--config.data.eval_split=test']
  result = run_launch([*args, '--config.data.manual_dir=', '--config.num_train_steps=4',
                       '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4',
                       '--config.batch_size=8', '--config.eval_batch_size=8'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.load(open(tmp_path / 'summary.json'))['step'] == 4
  sample = run_launch([*args, '--mode=sample', '--prompt=red ', '--num_tokens=10'])
  assert sample.returncode == 0, sample.stderr[-3000:]
  text = sample.stdout[sample.stdout.index('red '):]  # The prompt, then 10 characters.
  assert len(text.rstrip('\n')) >= 10 and set(text) <= set('one fish two red blue\n')


def test_the_own_data_example_trains(tmp_path):
  require_shared_data('mnist')
  result = run_launch(['--config=experiments/own_data_mnist.py:smoke',
                       f'--workdir={tmp_path}', '--config.num_train_steps=4',
                       '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.load(open(tmp_path / 'summary.json'))['step'] == 4
  assert json.load(open(tmp_path / 'dataset.json'))['meta']['input_shape'] == [28, 28, 1]


def test_an_unknown_name_and_a_bad_get_data_fail_before_anything_is_written(tmp_path, data_dir):
  bad = tmp_path / 'bad_data.py'
  bad.write_text('def get_data(config):\n  return [1, 2, 3]\n')
  cases = {'unknown name': (['--config.data.name=cifar100x'],
                            "config.data.name='cifar100x': TFDS has no such dataset"),
           'bad get_data': ([f'--config.data.get_data={bad}'], 'must return {split: data}')}
  for name, (extra, message) in cases.items():
    workdir = tmp_path / name.replace(' ', '_')
    result = run_launch([*SMOKE, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
                         *extra])
    assert result.returncode == 2, result.stderr[-3000:]
    lines = errors_of(result)
    assert len(lines) == 1 and message in lines[0], lines
    assert 'Traceback' not in result.stderr
    assert not os.path.exists(workdir) or not os.listdir(workdir)
