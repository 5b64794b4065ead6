"""grain's worker processes (research/data/streaming.py) do not outlive a trainer killed with
SIGKILL: grain starts them as daemons, which only a normal exit ends."""

import os
import signal
import subprocess
import sys
import time

from conftest import REPO

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A stand-in trainer: streams batches with one worker, prints the worker's pid, then waits.
CHILD = """
import multiprocessing, pathlib, sys, time
sys.path.insert(0, {tests!r})
from helpers import decode_record, write_record_shards
from research.config import base_config
from research.data import streaming
config = base_config()
config.batch_size, config.data.workers = 4, 1
source = streaming.RecordFiles(write_record_shards(pathlib.Path({tmp!r})))
dataset = streaming.stream_dataset(config, source, source, decode_record, meta=None)
for step in range(3):  # Step 0 here; 1 and 2 from the worker.
  dataset.train_batch(step)
print(*[p.pid for p in multiprocessing.active_children()], flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split()[2] != 'Z'
  except FileNotFoundError:
    return False


def test_workers_exit_when_the_trainer_is_killed(tmp_path):
  child = subprocess.Popen([sys.executable, '-c', CHILD.format(tests=TESTS, tmp=str(tmp_path))],
                           cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    workers = [int(p) for p in child.stdout.readline().split()]
    assert workers, 'the stand-in trainer started no worker'
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  deadline = time.monotonic() + 30  # The workers check every 0.5 s; generous for a busy CPU.
  while any(map(alive, workers)) and time.monotonic() < deadline:
    time.sleep(0.1)
  left = [pid for pid in workers if alive(pid)]
  for pid in left:
    os.kill(pid, signal.SIGKILL)
  assert not left, f'grain workers {left} outlived their trainer'
