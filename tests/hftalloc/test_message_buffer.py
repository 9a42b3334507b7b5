"""Compiled messages as buffer sources: memoryview assignment asks for a format (regression:
the exporter left it NULL and CPython dereferenced it)."""

import numpy as np
import pytest

import hftalloc
from hftalloc import MessageBus

pytestmark = pytest.mark.skipif(
    hftalloc.IMPLEMENTATION != "cython", reason="the compiled bus core is not built"
)


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
