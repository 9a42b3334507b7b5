"""Positive control for tools/valgrind.sh: a deliberate read of memory the core has freed.

It bypasses the safe API with ctypes (read a pool block's address after the pool and the
block are gone), so memcheck must report an invalid read whose "freed at" stack is in
coreallocs/_core. If the report tool does not count it, the checker is not armed.
"""

import ctypes
import gc

from coreallocs import Pool

pool = Pool(64, 4)
block = pool.allocate()
address = block.address
del block, pool
gc.collect()
ctypes.string_at(address, 8)  # use after free: must be reported
print("CANARY RAN")
