#!/usr/bin/env bash
# Build the coreallocs extensions with AddressSanitizer in a scratch copy of the repo and
# run tests against that build. The working tree is never touched (no in-place rebuild).
#
# Usage:
#   tools/sanitize.sh                    # core tests, bus and frame tests (compiled fast paths)
#                                        #   and the safety suite
#   tools/sanitize.sh tests/coreallocs/test_pool.py # any pytest arguments (paths are relative to the repo)
#   SANITIZE_FULL=1 tools/sanitize.sh    # the whole test suite
#   HYPOTHESIS_PROFILE=long tools/sanitize.sh   # long state-machine runs under ASan
#   SANITIZE_KEEP=1 tools/sanitize.sh    # keep the scratch build (its path is printed)
#   SANITIZE_BUILD_DIR=/tmp/x tools/sanitize.sh # reuse / place the scratch build there
#
# The sanitizer runtime is gcc's libasan, LD_PRELOADed into the (uninstrumented) python3.
# Leak detection is off (CPython keeps memory until exit on purpose); impossible requests
# (the tests ask for 2**50 bytes on purpose) return NULL instead of aborting. Exit status: 0 when
# the tests pass and ASan reported nothing, 1 otherwise. A final line "ASAN SUMMARY: ..."
# states the number of AddressSanitizer reports.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if ! command -v gcc >/dev/null 2>&1; then
    echo "ASAN SKIPPED: gcc not found" >&2
    exit 77
fi
LIBASAN="$(gcc -print-file-name=libasan.so)"
if [[ ! -e "$LIBASAN" || "$LIBASAN" == "libasan.so" ]]; then
    echo "ASAN SKIPPED: gcc has no libasan.so" >&2
    exit 77
fi

BUILD="${SANITIZE_BUILD_DIR:-}"
if [[ -z "$BUILD" ]]; then
    BUILD="$(mktemp -d "${TMPDIR:-/tmp}/coreallocs-asan.XXXXXX")"
    [[ "${SANITIZE_KEEP:-0}" == "1" ]] || trap 'rm -rf "$BUILD"' EXIT
fi
LOG="$BUILD/asan"
mkdir -p "$BUILD"

# -- 1. scratch copy + instrumented build ---------------------------------------------------
# Only sources: compiled artefacts of the working tree must not shadow the ASan build.
rm -rf "$BUILD/src"
cp -R "$REPO/src" "$BUILD/src"
find "$BUILD/src" \( -name '*.so' -o -name '*.o' -o -name '__pycache__' \) -prune -exec rm -rf {} +
for pyx in $(find "$BUILD/src" -name '*.pyx'); do  # regenerate every Cython C file
    rm -f "${pyx%.pyx}.c"
done
cp "$REPO/setup.py" "$REPO/pyproject.toml" "$BUILD/"
[[ -e "$REPO/README.md" ]] && cp "$REPO/README.md" "$BUILD/"

echo "== building with -fsanitize=address in $BUILD"
# numpy headers for extensions that cimport numpy (setup.py may not add them itself)
NUMPY_INCLUDE="$("$PYTHON" -c 'import numpy; print(numpy.get_include())' 2>/dev/null)"
if ! (cd "$BUILD" && COREALLOCS_SANITIZE=address COREALLOCS_DEBUG=1 \
        CFLAGS="${CFLAGS:-}${NUMPY_INCLUDE:+ -I$NUMPY_INCLUDE}" \
        "$PYTHON" setup.py build_ext --inplace -j "${SANITIZE_JOBS:-2}" >"$BUILD/build.log" 2>&1); then
    tail -n 40 "$BUILD/build.log"
    echo "ASAN SUMMARY: build failed"
    exit 1
fi
for so in $(find "$BUILD/src" -name '*.so'); do
    symbols="$(nm -D "$so" 2>/dev/null)"
    if [[ "$symbols" != *__asan_* ]]; then
        echo "ASAN SUMMARY: $so is not instrumented (no __asan_ symbols)"
        exit 1
    fi
done

# -- 2. run the tests with the sanitizer runtime preloaded ----------------------------------
# The C-API example (tests/support/capi_demo) is compiled against this build, instrumented too.
export COREALLOCS_SANITIZE=address COREALLOCS_DEBUG=1 COREALLOCS_CAPI_DEMO_CACHE="$BUILD/capi_demo"
if [[ $# -gt 0 ]]; then
    TESTS=("$@")
elif [[ "${SANITIZE_FULL:-0}" == "1" ]]; then
    TESTS=(tests)
else
    # the core, every compiled fast path (bus, frame cursor) and the safety suite
    # (not test_safety_sanitizer.py: it runs this script)
    TESTS=()
    for t in tests/coreallocs/test_pool.py tests/coreallocs/test_slab.py \
             tests/coreallocs/test_arena.py tests/coreallocs/test_capi.py \
             tests/coreallocs/test_core_stateful.py tests/hftalloc/test_*.py \
             tests/framealloc/test_*.py tests/safety/test_*.py; do
        [[ -e "$REPO/$t" && "$t" != tests/safety/test_sanitizer.py ]] && TESTS+=("$t")
    done
fi

rm -f "$LOG".*
loaded="$(cd "$REPO" && LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$BUILD/src" \
    "$PYTHON" -c 'import coreallocs._core as m; print(m.__file__)')"
if [[ "$loaded" != "$BUILD"/* ]]; then
    echo "ASAN SUMMARY: tests would import $loaded, not the ASan build"
    exit 1
fi
# Self-check: the preloaded runtime must catch a deliberate heap overflow (else 0 means nothing).
if (cd "$BUILD" && LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
        "$PYTHON" -c 'import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
ctypes.memset(libc.malloc(16) + 16, 0, 1)' >/dev/null 2>&1); then
    echo "ASAN SUMMARY: the sanitizer runtime did not catch a deliberate overflow; not armed"
    exit 1
fi
echo "== self-check: ASan caught a deliberate heap overflow"
# Free pool slots are poisoned in this build: a write into a freed block must be reported.
if (cd "$BUILD" && LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$BUILD/src" \
        "$PYTHON" -c 'import ctypes, sys
sys.path.insert(0, "'"$REPO"'/tests/support")
import coreallocs, capi_demo
capi = capi_demo.load()
pool = coreallocs.Pool(64, 2)
addr = capi.pool_alloc_address(pool)
assert capi.pool_free_address(pool, addr) == 0
ctypes.memset(addr, 0, 1)' >/dev/null 2>&1); then
    echo "ASAN SUMMARY: a write into a freed pool slot went unnoticed; slots are not poisoned"
    exit 1
fi
echo "== self-check: ASan caught a write into a freed pool slot"
echo "== running pytest ${TESTS[*]} under ASan"
# ASan must come first in the link order: preload it into the interpreter.
# PYTHONMALLOC=malloc lets ASan see Python objects too (redzones around every object).
(cd "$REPO" && \
    LD_PRELOAD="$LIBASAN" \
    ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:log_path=$LOG:${ASAN_OPTIONS_EXTRA:-}" \
    PYTHONMALLOC=malloc \
    PYTHONPATH="$BUILD/src" \
    "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}")
status=$?

reports=0
if compgen -G "$LOG.*" >/dev/null; then
    reports=$(grep -h -c "ERROR: AddressSanitizer" "$LOG".* | awk '{s += $1} END {print s + 0}')
    for f in "$LOG".*; do
        grep -q "ERROR: AddressSanitizer" "$f" || continue  # (allocation-refused warnings)
        echo "---- $f"
        sed -n '1,60p' "$f"
    done
fi
echo "ASAN SUMMARY: pytest exit status $status, $reports AddressSanitizer report(s)"
if [[ $status -ne 0 || $reports -ne 0 ]]; then
    exit 1
fi
exit 0
