"""The C-API example (``_capi_demo.pyx``), compiled against the INSTALLED coreallocs.

``_capi_demo.pyx`` uses ``cimport coreallocs`` exactly as a downstream Cython module
would: it sees only the ``.pxd``/``.h`` files the installed package ships, and is
compiled with ``include_dirs=[coreallocs.get_include()]`` and nothing else. It is not
part of the library; the tests, benchmarks and memory-checker tools use it to drive
the nogil C API.

``load()`` builds it once per (coreallocs installation, interpreter, Cython, build
flags) into a cache directory outside the source tree, then imports it:

- cache: ``$COREALLOCS_CAPI_DEMO_CACHE`` when set, else ``<repo>/build/capi_demo``;
- ``COREALLOCS_SANITIZE`` / ``COREALLOCS_DEBUG`` add the same compiler flags as the
  package build (``tools/sanitize.sh`` sets them);
- the build runs in a child interpreter under a file lock, so parallel test processes
  build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import coreallocs

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_capi_demo.pyx"
MODULE = "_capi_demo"
REPO = HERE.parents[2]

_BUILD = r"""
import sys
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Distribution, Extension

work, out, include, flags = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4].split()
ext = Extension(
    "_capi_demo",
    [str(work / "_capi_demo.pyx")],
    include_dirs=[include],  # coreallocs.get_include(): what a downstream user passes
    extra_compile_args=flags,
    extra_link_args=[f for f in flags if f.startswith("-fsanitize")],
)
modules = cythonize([ext], include_path=[include], quiet=True,
                    compiler_directives={"language_level": 3, "boundscheck": False,
                                         "wraparound": False, "cdivision": True})
dist = Distribution({"name": "capi-demo", "ext_modules": modules})
build = dist.get_command_obj("build_ext")
build.build_lib = str(out)
build.build_temp = str(work / "tmp")
dist.run_command("build_ext")
"""


def _flags() -> list[str]:
    flags = ["-O0", "-g"] if os.environ.get("COREALLOCS_DEBUG") == "1" else ["-O3"]  # as setup.py
    sanitize = os.environ.get("COREALLOCS_SANITIZE", "")
    if sanitize:
        flags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    return flags


def _key(flags: list[str]) -> str:
    """Everything the compiled module depends on: its source, the installed C API, the
    interpreter, Cython and the flags."""
    digest = hashlib.sha256()
    package = Path(coreallocs.__file__).resolve().parent
    digest.update(SOURCE.read_bytes())
    digest.update(_BUILD.encode())
    for header in sorted([*package.rglob("*.pxd"), *package.rglob("*.h")]):
        digest.update(str(header.relative_to(package)).encode())
        digest.update(header.read_bytes())
    for part in (str(package), sys.version, importlib.metadata.version("Cython"), " ".join(flags),
                 str(sysconfig.get_config_var("EXT_SUFFIX"))):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("COREALLOCS_CAPI_DEMO_CACHE") or REPO / "build" / "capi_demo")


def _built(out: Path) -> Path | None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    path = out / f"{MODULE}{suffix}"
    return path if path.exists() else None


def build() -> Path:
    """Compile the module (if this configuration has no build yet); returns the .so path."""
    flags = _flags()
    out = cache_root() / _key(flags)
    found = _built(out)
    if found is not None:
        return found
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _built(out)  # another process may have built it while we waited
        if found is not None:
            return found
        work = out / "work"
        work.mkdir(exist_ok=True)
        (work / "_capi_demo.pyx").write_bytes(SOURCE.read_bytes())
        # The compiler runs without a preloaded sanitizer runtime (tools/sanitize.sh preloads
        # libasan into the tests; gcc must not report through it).
        env = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC")}
        result = subprocess.run(
            [sys.executable, "-c", _BUILD, str(work), str(work / "lib"),
             coreallocs.get_include(), " ".join(flags)],
            capture_output=True, text=True, cwd=work, check=False, env=env,
        )
        made = _built(work / "lib")
        if made is not None:  # appears complete or not at all for unlocked readers
            os.replace(made, out / made.name)
        found = _built(out)
        if result.returncode != 0 or found is None:
            raise RuntimeError(
                f"building the C-API demo against {coreallocs.get_include()} failed "
                f"(exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return found


def load() -> ModuleType:
    """The compiled demo module (built on first use)."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    path = build()
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    spec = importlib.util.spec_from_file_location(MODULE, str(path), loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[MODULE] = module
    return module
