"""Build the Cython extensions of `coreallocs` (metadata lives in pyproject.toml)."""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("COREALLOCS_DEBUG") == "1"
SANITIZE = os.environ.get("COREALLOCS_SANITIZE", "")  # e.g. "address"

compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
link_args: list[str] = []
if SANITIZE:
    compile_args += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-g"]
    link_args += [f"-fsanitize={SANITIZE}"]

# Every .pyx under src/ (packages and subpackages) is an extension module of the same name.
SOURCES = sorted(glob.glob("src/**/*.pyx", recursive=True))

# The bus core's per-message helpers (`cdef inline`, each used by the single and the batch
# publish paths) are larger than GCC inlines by default: let it inline them there.
MODULE_ARGS = {"hftalloc._bus": [] if DEBUG else ["--param=max-inline-insns-single=1000"]}

extensions = [
    Extension(
        module,
        [path],
        include_dirs=["src/coreallocs", "src", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args + MODULE_ARGS.get(module, []),
        extra_link_args=link_args,
    )
    for path in SOURCES
    for module in [path[len("src/"):-len(".pyx")].replace("/", ".")]
]

setup(
    # compile the extensions in parallel (one job per core)
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
    ext_modules=cythonize(
        extensions,
        include_path=["src"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        annotate=False,
        nthreads=os.cpu_count() or 1,
    ),
)
