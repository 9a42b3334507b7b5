"""CRC-32C: known vectors, hardware and software implementations agree."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hftalloc.errors import RecordTypeError
from hftalloc.journal import _journal as J
from hftalloc.journal import crc32c, crc32c_implementation

HW = J.crc32c_hardware_available()
# RFC 3720 (iSCSI) test vectors and the usual check value
VECTORS = [
    (b"123456789", 0xE3069283),
    (b"\x00" * 32, 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0),
]


@pytest.mark.parametrize("data,expected", VECTORS)
def test_known_vectors(data, expected):
    assert crc32c(data) == expected
    assert J.crc32c_software(data) == expected
    if HW:
        assert J.crc32c_hardware(data) == expected


@given(st.binary(max_size=2000), st.integers(0, 15), st.integers(0, 2**32 - 1))
def test_hardware_equals_software(data, skip, seed):
    if not HW:
        pytest.skip("this CPU has no SSE4.2 crc32 instruction")
    view = memoryview(data)[skip:]          # every start alignment
    assert J.crc32c_hardware(view, seed) == J.crc32c_software(view, seed)


@given(st.binary(max_size=500), st.binary(max_size=500))
def test_chaining(a, b):
    assert crc32c(b, crc32c(a)) == crc32c(a + b)
    assert J.crc32c_software(b, J.crc32c_software(a)) == J.crc32c_software(a + b)


def test_implementation_choice():
    assert crc32c_implementation() == ("sse4.2" if HW else "software")
    code = ("from hftalloc.journal import crc32c, crc32c_implementation as i;"
            "print(i(), hex(crc32c(b'123456789')))")
    env = dict(os.environ, HFTALLOC_CRC32C="software")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["software", "0xe3069283"]


def test_not_bytes():
    with pytest.raises(RecordTypeError):
        crc32c("text")
    with pytest.raises(RecordTypeError):
        crc32c(memoryview(b"abcdef")[::2])
