"""Messages as buffer sources/targets: memoryview assignment asks for a format (regression)."""

import numpy as np
import pytest

from hftalloc import MessageBus, PyMessageBus


@pytest.mark.parametrize("bus_type", [MessageBus, PyMessageBus], ids=["default", "python"])
def test_message_can_be_copied_into_a_memoryview(bus_type):
    bus = bus_type()
    copies = []

    def subscriber(msg):
        target = bytearray(len(msg))
        memoryview(target)[:] = msg          # the exporter must provide format "B"
        copies.append(bytes(target))
        assert memoryview(msg).format == "B"
        assert np.frombuffer(msg, np.uint8).tobytes() == bytes(target)

    bus.subscribe("t", subscriber)
    bus.publish("t", b"hello")
    with bus.claim("t", 3) as claim:
        memoryview(claim.buffer)[:] = b"abc"
    assert copies == [b"hello", b"abc"]
    bus.close()
