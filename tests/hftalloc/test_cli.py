"""`python -m hftalloc status|cleanup` reaches the shared-memory segment tool."""

import os
import subprocess
import sys


def _run(*args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "hftalloc", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def test_status_and_cleanup_dry_run_are_dispatched_to_the_ipc_cli():
    from hftalloc.shm import Channel

    name = f"clitest-{os.getpid()}"
    with Channel(name, blocks_per_class=4, num_classes=1):
        status = _run("status")
        assert status.returncode == 0, status.stderr
        assert name in status.stdout
        dry = _run("cleanup", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert name not in dry.stdout  # in use by this process: never a cleanup candidate


def test_plain_module_run_is_the_self_check():
    result = _run()
    assert result.returncode == 0, result.stderr
    assert "messages of 64 B" in result.stdout
