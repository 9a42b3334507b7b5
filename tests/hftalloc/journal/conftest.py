"""Helpers of the journal tests."""

from __future__ import annotations

import pytest

from hftalloc.journal import JournalWriter

SMALL = 64 * 1024          # smallest segment: rolls after a few hundred records


@pytest.fixture
def jdir(tmp_path):
    return str(tmp_path / "journal")


@pytest.fixture
def small_writer(jdir):
    w = JournalWriter(jdir, segment_size=SMALL, max_payload=4096, index_every=16)
    yield w
    w.close()
