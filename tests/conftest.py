"""Shared test configuration.

- The suite runs against the installed package (``make test`` builds a wheel, installs
  it into a fresh venv and runs pytest from outside the source tree): importing a package
  from this checkout's ``src/`` is refused, so a test can never pass against stale or
  uncompiled sources by accident.
- ``tests/support`` (reference models and helpers shared by tests) is importable.
- ``COREALLOCS_REQUIRE_TEST_EXTRAS=1`` (set by ``make test``): the real counterparts of the
  `test` extra (QuickFIX, simplefix, pygame-ce, matplotlib, pyzmq, uvloop) must import.
- Hypothesis profiles: ``ci`` by default, ``long`` on demand (``HYPOTHESIS_PROFILE=long``).
"""

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
sys.path.insert(0, str(TESTS / "support"))

import coreallocs  # noqa: E402
import framealloc  # noqa: E402
import hftalloc  # noqa: E402

for _pkg in (coreallocs, framealloc, hftalloc):
    _where = Path(_pkg.__file__).resolve()
    if SRC in _where.parents:
        raise RuntimeError(
            f"{_pkg.__name__} was imported from the source tree ({_where}); the tests run "
            "against the installed package: use `make test`")

# `make test` (and so CI) installs the whole `test` extra: there, a missing counterpart must
# fail the run instead of skipping the tests that use it
if os.environ.get("COREALLOCS_REQUIRE_TEST_EXTRAS") == "1":
    import importlib

    for _module in ("quickfix", "simplefix", "pygame", "matplotlib", "zmq", "uvloop", "cymem"):
        importlib.import_module(_module)

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
