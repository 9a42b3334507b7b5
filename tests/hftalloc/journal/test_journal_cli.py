"""python -m hftalloc journal info|dump|verify|replay."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from hftalloc import schemas as S
from hftalloc.cli import main
from hftalloc.journal import JournalWriter
from hftalloc.journal.format import segment_name


class Done:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run ``python -m hftalloc journal ...`` in this process (its main())."""
    def run(*args: str) -> Done:
        capsys.readouterr()
        code = main(["journal", *args])
        out = capsys.readouterr()
        return Done(code, out.out, out.err)
    return run


def test_module_entry_point(tmp_path):
    path = str(tmp_path / "j")
    make(path)
    done = subprocess.run([sys.executable, "-m", "hftalloc", "journal", "verify", path],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 0 and "400 intact records" in done.stdout, done.stderr


def make(path: str) -> None:
    with JournalWriter(path, segment_size=64 * 1024) as w:
        for i in range(200):
            buf = bytearray(S.QUOTE.size)
            S.QUOTE.pack_into(buf, 0, b"AAPL", 100.0 + i, 100, 100.5 + i, 200, i)
            w.append("md.quote.AAPL", buf, 1000 + i)
            w.append("raw.bytes", b"\x01\x02\xff", 1000 + i)


def test_info(tmp_path, cli):
    path = str(tmp_path / "j")
    make(path)
    done = cli("info", path)
    assert done.returncode == 0, done.stderr
    assert "records   400 (seq 1..400)" in done.stdout
    assert "md.quote.AAPL, raw.bytes" in done.stdout
    assert "1000 .. 1199 ns" in done.stdout
    done = cli("info", path, "--json")
    assert '"records": 400' in done.stdout


def test_dump_decodes_filters_and_hex(tmp_path, cli):
    path = str(tmp_path / "j")
    make(path)
    out = cli("dump", path, "--topic", "md.>", "--from", "1010", "--to", "1013").stdout
    lines = out.splitlines()
    assert len(lines) == 3 and all("md.quote.AAPL" in line for line in lines)
    assert "Quote(" in lines[0] and "bid_px=110.0" in lines[0]
    out = cli("dump", path, "--topic", "raw.*", "--limit", "2").stdout.splitlines()
    assert len(out) == 2 and out[0].endswith("0102ff")
    out = cli("dump", path, "--seq", "399", "--hex").stdout.splitlines()
    assert [line.split()[0] for line in out] == ["399", "400"] and "Quote(" not in out[0]


def test_verify_exit_codes(tmp_path, cli):
    path = str(tmp_path / "j")
    make(path)
    done = cli("verify", path)
    assert done.returncode == 0 and "400 intact records" in done.stdout
    seg = os.path.join(path, segment_name(1))
    with open(seg, "r+b") as f:                # damage record 3's payload
        f.seek(128)
        length = struct.unpack("<I", f.read(4))[0]
        second = 128 + ((length + 7) & ~7)
        f.seek(second)
        length2 = struct.unpack("<I", f.read(4))[0]
        third = second + ((length2 + 7) & ~7)
        f.seek(third + 33)
        f.write(b"\xee")
    done = cli("verify", path)
    assert done.returncode == 1
    assert f"{seg} @ {third}: checksum" in done.stdout


def test_replay_and_errors(tmp_path, cli):
    path = str(tmp_path / "j")
    make(path)
    done = cli("replay", path)
    assert done.returncode == 0 and "replayed 400 records (0 dropped)" in done.stdout
    assert "delivered 400" in done.stdout
    done = cli("replay", path, "--topic", "raw.*", "--speed", "1000")
    assert "replayed 200 records" in done.stdout
    done = cli("info", str(tmp_path / "missing"))
    assert done.returncode == 2 and "no journal" in done.stderr
    (tmp_path / "file").write_text("x")
    done = cli("verify", str(tmp_path / "file"))
    assert done.returncode == 2 and "not a journal directory" in done.stderr
