#!/usr/bin/env bash
# Run project code under valgrind memcheck and count the errors that involve project code.
#
# Usage:
#   tools/valgrind.sh --quick          # tools/memcheck_workload.py only (~1 min)
#   tools/valgrind.sh                  # workload + core, bus, frame and safety tests + both
#                                      #   demos in short modes (~15-30 min on 2 cores)
#   tools/valgrind.sh -- tests/coreallocs/test_pool.py -k exhaust   # pytest on the given arguments
#
# Environment: PYTHON (interpreter, default python3), VALGRIND_LOG_DIR (keep the XML logs
# there), VALGRIND_ROUNDS (workload rounds, default 3).
#
# Noise strategy: PYTHONMALLOC=malloc so every Python object is a malloc block valgrind can
# see (no pymalloc arenas, no address_in_range false positives), the distribution's CPython
# suppressions (/usr/lib/valgrind/python3.supp when present) plus tools/valgrind-python.supp
# for the few known-benign CPython/libc reports, leak reports off (CPython frees little at
# exit). tools/valgrind_report.py then classifies every remaining error: it counts as a
# project error when any of its stacks (including "alloc'd at" / "freed at") is in the
# compiled project modules. Exit status 1 when a project error was found.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! command -v valgrind >/dev/null 2>&1; then
    echo "VALGRIND SKIPPED: valgrind not found" >&2
    exit 77
fi
# pyenv & co. install shell-script shims: valgrind must start the real interpreter.
PYEXE="$("$PYTHON" -c 'import sys; print(sys.executable)')"

MODE=full
PYTEST_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) MODE=quick; shift ;;
        --) shift; MODE=pytest; PYTEST_ARGS=("$@"); break ;;
        *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

LOGDIR="${VALGRIND_LOG_DIR:-}"
if [[ -z "$LOGDIR" ]]; then
    LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/coreallocs-valgrind.XXXXXX")"
    trap 'rm -rf "$LOGDIR"' EXIT
fi
mkdir -p "$LOGDIR"
rm -rf "$LOGDIR"/*.xml "$LOGDIR/canary"

SUPP=(--suppressions="$REPO/tools/valgrind-python.supp")
[[ -e /usr/lib/valgrind/python3.supp ]] && SUPP+=(--suppressions=/usr/lib/valgrind/python3.supp)

failures=0
run() {  # run <label> <python args...>
    local label="$1"; shift
    echo "== valgrind: $label"
    # %p: one log per process (a forked child must not interleave its XML with ours).
    (cd "$REPO" && PYTHONMALLOC=malloc \
        valgrind --tool=memcheck --leak-check=no --show-leak-kinds=none --num-callers=40 \
            --xml=yes --xml-file="$LOGDIR/${label}.%p.xml" "${SUPP[@]}" \
            "$PYEXE" "$@") || { echo "   (exit status $? for $label)"; failures=$((failures + 1)); }
}

demo_runs() {
    # The demos in short modes (valgrind slows Python down ~30x).
    if [[ -e "$REPO/examples/trading_demo.py" ]]; then
        run trading_demo examples/trading_demo.py --duration 2 --rate 2000 --symbols 4 --quiet
        run trading_demo_async examples/trading_demo.py --duration 2 --rate 2000 --symbols 4 \
            --quiet --mode async
    fi
    if [[ -e "$REPO/examples/game_demo.py" ]]; then
        run game_demo examples/game_demo.py --frames 30 --particles 2000
    fi
}

# Self-check: a deliberate use-after-free of pool memory (via ctypes) must be counted.
mkdir -p "$LOGDIR/canary"
(cd "$REPO" && PYTHONMALLOC=malloc \
    valgrind --tool=memcheck --leak-check=no --show-leak-kinds=none --num-callers=40 \
        --xml=yes --xml-file="$LOGDIR/canary/canary.%p.xml" "${SUPP[@]}" \
        "$PYEXE" tools/memcheck_canary.py >/dev/null 2>&1)
if "$PYTHON" "$REPO/tools/valgrind_report.py" --show 0 "$LOGDIR"/canary/*.xml >/dev/null; then
    echo "VALGRIND SUMMARY: the deliberate use-after-free was not reported; checker not armed"
    exit 1
fi
echo "== self-check: memcheck reported the deliberate use-after-free of pool memory"

case "$MODE" in
    quick)
        run workload tools/memcheck_workload.py --rounds "${VALGRIND_ROUNDS:-3}" ;;
    pytest)
        run pytest -m pytest -q -p no:cacheprovider -p no:randomly "${PYTEST_ARGS[@]}" ;;
    full)
        run workload tools/memcheck_workload.py --rounds "${VALGRIND_ROUNDS:-3}"
        tests=()
        for t in tests/coreallocs/test_pool.py tests/coreallocs/test_slab.py \
                 tests/coreallocs/test_arena.py tests/coreallocs/test_capi.py \
                 tests/hftalloc/test_bus.py tests/framealloc/test_allocator.py \
                 tests/framealloc/test_arrays.py tests/framealloc/test_safety.py \
                 tests/safety/test_bad_input*.py tests/safety/test_threads.py; do
            [[ -e "$REPO/$t" ]] && tests+=("$t")
        done
        run pytest -m pytest -q -p no:cacheprovider "${tests[@]}"
        demo_runs ;;
esac

shopt -s nullglob
logs=("$LOGDIR"/*.xml)
"$PYTHON" "$REPO/tools/valgrind_report.py" "${logs[@]}"
report=$?
if [[ $failures -ne 0 ]]; then
    echo "VALGRIND: $failures run(s) exited with an error status"
    exit 1
fi
exit $report
