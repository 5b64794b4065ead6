"""Process-wide host settings for speed: a glibc malloc that keeps the memory it frees.

XLA:CPU allocates each step's temporaries (one arena: 53 MiB for the `:cpu` LM, 1.4 GiB for the
wide one) with malloc and frees them when the step ends. glibc serves any block above its mmap
threshold (32 MiB at most) with a fresh `mmap` and returns freed heap tops to the OS, so every
step page-faults all of its temporaries in again: 13,500 minor faults and ~30 ms of system time per
`:cpu` LM step, a quarter of the run's CPU time (docs/performance.md#system-time-page-faults).
With mmap and trimming off, the memory a step frees serves the next step's allocations.
`config.malloc_keep_freed_memory` (default True) switches it on in train and benchmark runs.
"""

from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = (
    (M_MMAP_MAX, 0),  # Every block from the heap (an mmapped block is unmapped on free).
    (M_TRIM_THRESHOLD, 2**31 - 1),  # Never return a freed heap top to the OS.
    (M_TOP_PAD, 256 << 20),  # Grow the heap in big steps (address space only until touched).
)


def keep_freed_memory() -> bool:
  """Applies SETTINGS with glibc's `mallopt`; False (nothing changed) under another C library.

  Process-wide and for the rest of the process: the resident size stays at its peak.
  """
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return False
  libc = ctypes.CDLL(None)
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
