"""ObjectPool: reuse expensive scratch objects instead of rebuilding them.

PYTHONPATH=src python3 examples/raii_object_pool.py
"""

from coreallocs.object_pool import ObjectPool

MIB = 1 << 20
ZERO = bytes(MIB)


def zero_fill(buf: bytearray) -> None:
    buf[:] = ZERO


# Keep at most 4 idle 1 MiB buffers; zero them before they are reused.
pool = ObjectPool(lambda: bytearray(MIB), max_size=4, reset=zero_fill)

with pool.acquire() as buf:  # returned to the pool (after reset) on exit
    buf[:5] = b"hello"

guard = pool.acquire()  # outside `with`: a guard you release or detach yourself
assert guard.value[:5] == bytes(5)  # the same buffer, reset
guard.release()

kept = pool.acquire().detach()  # keep this one for good: it leaves the pool's accounting
s = pool.stats()
print(f"created={s.created} reused={s.reused} detached={s.detached} in_use={s.in_use}")
# created=1 reused=2 detached=1 in_use=0
