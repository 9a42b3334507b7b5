"""ResourceScope: hierarchical ownership; children close first, then resources newest first.

PYTHONPATH=src python3 examples/raii_scope.py
"""

import asyncio
import io

from coreallocs import SlabAllocator
from coreallocs.scope import ResourceScope

slab = SlabAllocator()

with ResourceScope("request") as request:
    header = request.allocate(slab, 64)  # a Block owned by the scope
    log = request.add(io.StringIO())  # anything with close()/release()
    request.callback(print, "request scope closed")

    with request.child("parse") as parse:  # closed before the parent's own resources
        scratch = parse.allocate(slab, 256)
        print(request.total_count)  # 4: header, log, callback, scratch

    early = request.add(io.BytesIO())
    early.release()  # released now; the scope will not release it again
print(slab.in_use)  # 0


async def main() -> None:
    async with ResourceScope("task") as scope:  # awaits async cleanups (aclose())
        scope.allocate(slab, 32)
        scope.callback(asyncio.sleep, 0)


asyncio.run(main())
print(slab.in_use)  # 0
