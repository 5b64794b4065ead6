"""research/host.py: with its glibc tunables, a freed 64 MiB block (bigger than any mmap threshold
glibc allows, and than a thread's own heap) serves the next allocation, in the main thread and in
another, without page-faulting its memory in again; and when the tunables are (not) added. Each
allocation case runs in a fresh interpreter (malloc settings are fixed at process start)."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from research import host

SCRIPT = """
import ctypes, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
faults = []
def cycles():  # As XLA:CPU's temporaries each step: malloc, touch every page, free.
  def cycle():
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
  cycle()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(4):
    cycle()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
cycles()
thread = threading.Thread(target=cycles)
thread.start()
thread.join()
print(*faults)
"""


def faults(environ: dict) -> list[int]:
  out = subprocess.run([sys.executable, '-c', SCRIPT], cwd=REPO, check=True, env=environ,
                       capture_output=True, text=True).stdout
  return [int(x) for x in out.split()]


@pytest.mark.skipif(not host.is_glibc(), reason='glibc malloc only')
def test_freed_memory_is_reused_without_page_faults():
  plain = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', host.ENV)}
  pages = 4 * (64 << 20) // 4096
  # glibc's defaults: each cycle faults the block in again, in the main thread and another.
  assert all(n > pages // 2 for n in faults(plain))
  assert all(n < pages // 20 for n in faults(host.tuned_environment(plain)))


@pytest.mark.skipif(not host.is_glibc(), reason='glibc malloc only')
def test_tunables_are_added_once_and_can_be_switched_off():
  tuned = host.tuned_environment({'GLIBC_TUNABLES': 'glibc.pthread.rseq=0'})
  assert tuned['GLIBC_TUNABLES'] == 'glibc.pthread.rseq=0:' + host.TUNABLES
  assert host.tuned_environment(tuned) is None  # Already re-executed: no loop.
  assert host.tuned_environment({host.ENV: '0'}) is None
