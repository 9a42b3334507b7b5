"""Typed boxes: one fixed-layout value stored in place in a slab block.

PYTHONPATH=src python3 examples/raii_boxes.py
"""

import numpy as np

from coreallocs import SlabAllocator

slab = SlabAllocator(max_size=256, blocks_per_class=64)

# struct format: the value is a tuple
with slab.box("<qd", (42, 101.25)) as order:  # block released on exit
    order[1] = 101.5
    print(order.value)  # (42, 101.5)

# numpy structured dtype: field access, record copies, and a live view
tick_t = np.dtype([("price", "<f8"), ("qty", "<i4")])
tick = slab.box(tick_t, (99.5, 10))
tick["qty"] += 5
view = tick.array  # a live one-element numpy view of the block
view["price"] *= 2
print(tick.value)  # (199.0, 15)
del view  # release() refuses (BufferStillExported) while a view is alive
tick.release()
print(slab.in_use)  # 0
