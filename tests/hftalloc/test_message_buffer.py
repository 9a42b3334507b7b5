"""Compiled messages as buffer sources: memoryview assignment asks for a format (regression:
the exporter left it NULL and CPython dereferenced it)."""

import numpy as np

from hftalloc import MessageBus


def test_message_can_be_copied_into_a_memoryview():
    bus = MessageBus()
    copies = []

    def subscriber(msg):
        target = bytearray(len(msg))
        memoryview(target)[:] = msg  # the exporter must provide format "B"
        copies.append(bytes(target))
        assert memoryview(msg).format == "B"
        assert np.frombuffer(msg, np.uint8).tobytes() == bytes(target)

    bus.subscribe("t", subscriber)
    bus.publish("t", b"hello")
    with bus.claim("t", 3) as claim:
        memoryview(claim.buffer)[:] = b"abc"
    assert copies == [b"hello", b"abc"]
    assert bus.stats().errors == 0
    bus.close()
