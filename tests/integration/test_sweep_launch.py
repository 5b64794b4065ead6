"""`launch.py --sweep` end to end: real training points through launch.py, a failing point
isolated, then the report on the sweep folder."""

import json
import re

from conftest import run_launch
from helpers import sweep_experiment

from research.tools.report import write_report


def test_sweep_end_to_end_with_a_failing_point(tmp_path, data_dir):
  exp = tmp_path / 'exp.py'
  # The failing point comes first: the other must still run.
  exp.write_text(sweep_experiment(32, 'product, sweep', """
      return product(sweep('optimizer.learning_rate', [1e30, 1e-3]), sweep('seed', [0]))
  """))
  workdir = tmp_path / 'sw'
  args = [f'--config={exp}', f'--workdir={workdir}', f'--config.data.data_dir={data_dir}']
  result = run_launch([*args, '--sweep'])
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'error: 1 of 2 sweep points failed' in result.stderr
  manifest = json.loads((workdir / 'sweep.json').read_text())
  assert [p['status'] for p in manifest['points']] == ['failed', 'done']
  assert re.search('non-?finite', manifest['points'][0]['error'], re.I)  # The trainer's message.
  good = workdir / manifest['points'][1]['name']
  assert json.loads((good / 'summary.json').read_text())['step'] == 8

  write_report(str(workdir))
  report = (workdir / 'report.md').read_text()
  failed_section = report.split('## Failed and incomplete points')[1].split('## Points')[0]
  assert manifest['points'][0]['name'] in failed_section
  assert re.search('non-?finite', failed_section, re.I)
  assert '1 done, 1 failed' in report
  assert (workdir / 'curves_accuracy.png').exists()
