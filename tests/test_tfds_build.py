"""research/data/tfds_build.py: building a dataset once when several processes start together."""

import os
import subprocess
import sys

from conftest import REPO, require_shared_data

# Each process loads the train split of a fresh data dir, as `srun -n 2 launch.py` does.
LOAD = """
import sys
from research.data import tfds_build
arrays = tfds_build.load_arrays('tiny_shakespeare', 'train', sys.argv[1], sys.argv[2],
                                ('input.txt',))
print(len(bytes(arrays['text'][0])))
"""


def test_processes_started_together_build_once(tmp_path):
  manual_dir = require_shared_data('tiny_shakespeare')
  data_dir = str(tmp_path / 'tfds')
  procs = [subprocess.Popen([sys.executable, '-c', LOAD, data_dir, manual_dir], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-2000:]
    assert out.split()[-1] == '1003854'  # The train split's characters.
  versions = os.listdir(os.path.join(data_dir, 'tiny_shakespeare'))
  assert [v for v in versions if 'incomplete' in v] == []
