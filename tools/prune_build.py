"""Delete files under build/lib*/ whose source no longer exists in src/.

setuptools reuses build/lib* between builds, so a module that was removed or moved out of
the package would otherwise still be copied into the next wheel.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_of(built: Path, lib: Path) -> Path:
    rel = built.relative_to(lib)
    if built.suffix == ".so":  # pkg/mod.cpython-311-x86_64-linux-gnu.so <- src/pkg/mod.pyx
        return ROOT / "src" / rel.parent / (rel.name.split(".", 1)[0] + ".pyx")
    return ROOT / "src" / rel


def main() -> int:
    removed = 0
    for lib in (ROOT / "build").glob("lib*"):
        for built in sorted(p for p in lib.rglob("*") if p.is_file()):
            if not source_of(built, lib).exists():
                built.unlink()
                removed += 1
    if removed:
        print(f"prune_build: removed {removed} stale file(s) from build/lib*", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
