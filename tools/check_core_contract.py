"""Check the contract of the compiled modules (run on a source tree or an installed package).

    python tools/check_core_contract.py            # the packages under src/
    python tools/check_core_contract.py DIR ...    # any folder holding the packages

1. No compiled class calls a method that only Python code defines: every ``self.NAME``
   inside a ``cdef class`` of a ``.pyx`` must be a method, property or attribute that the
   class or one of its compiled bases declares (in its ``.pyx`` or a cimported ``.pxd``).
2. Compiled classes open no internals: no instance ``__dict__``, no ``cdef public``
   attribute unless its line says ``# public API:`` (a user-facing setting).
3. Each message concept exists once: one compiled class with the message state machine
   (``retain``/``release``/buffer export), one tuple of state names, one definition of
   the RAISE/DROP/BLOCK policies.

Prints each violation and exits 1 if there is any, else prints a summary and exits 0.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

CLASS = re.compile(r"^cdef\s+class\s+(\w+)\s*(?:\((\w+(?:\.\w+)*)\))?\s*:", re.M)
TYPE = r"[\w\.\[\]\*:,\s]+?"  # a C or extension type: uint64_t[::1], cnp.dtype, char* ...
DEF = re.compile(rf"^\s+(?:async\s+)?(?:cp?def|def)\s+(?:{TYPE}\s+)?\**(\w+)\s*\(", re.M)
ATTR = re.compile(rf"^\s+cdef\s+(?:readonly\s+|public\s+)?{TYPE}\s*\**"
                  r"(\w+(?:\s*,\s*\**\w+)*)\s*(?:\[.*\])?\s*(?:#.*)?$", re.M)
PROPERTY = re.compile(r"^\s+@property\s*\n\s+def\s+(\w+)", re.M)
SELF_USE = re.compile(r"\bself\.(\w+)")
BUILTIN_SLOTS = {"__class__", "__dict__", "__weakref__"}
# attributes every Python object has (looked up on the type, never defined by a subclass)
OBJECT_ATTRS = set(dir(object))


@dataclass
class CompiledClass:
    name: str
    base: str | None
    file: Path
    body: str
    names: set[str] = field(default_factory=set)


def class_bodies(text: str) -> list[tuple[str, str | None, str]]:
    """(name, base, body) of every top-level ``cdef class`` in a .pyx or .pxd text."""
    found = list(CLASS.finditer(text))
    out = []
    for i, m in enumerate(found):
        end = len(text)
        nxt = re.compile(r"^\S", re.M).search(text, m.end())
        while nxt is not None and nxt.group(0) in ("#", "@"):
            nxt = re.compile(r"^\S", re.M).search(text, nxt.end())
        if nxt is not None:
            end = nxt.start()
        if i + 1 < len(found):
            end = min(end, found[i + 1].start())
        base = m.group(2).split(".")[-1] if m.group(2) else None
        out.append((m.group(1), base, text[m.end():end]))
    return out


def declared_names(body: str) -> set[str]:
    names = set(DEF.findall(body)) | set(PROPERTY.findall(body))
    for group in ATTR.findall(body):
        names |= {n.strip() for n in group.split(",")}
    return names


def check(roots: list[Path]) -> list[str]:
    problems: list[str] = []
    classes: dict[str, list[CompiledClass]] = {}
    pyx_files = [p for r in roots for p in sorted(r.rglob("*.pyx")) if "capi_demo" not in p.parts]
    pxd_files = [p for r in roots for p in sorted(r.rglob("*.pxd"))]
    for path in pyx_files + pxd_files:
        text = path.read_text()
        for name, base, body in class_bodies(text):
            entry = CompiledClass(name, base, path, body, declared_names(body))
            classes.setdefault(name, []).append(entry)
            for line in re.findall(r"^\s+cdef\s+public\s.*$", body, re.M):
                if "# public API:" not in line:  # a user-facing setting says so on its line
                    problems.append(f"{path}: class {name} has a `cdef public` attribute: "
                                    f"{line.strip()}")
            if re.search(r"^\s+cdef\s+dict\s+__dict__", body, re.M):
                problems.append(f"{path}: class {name} has an instance __dict__")

    def names_of(cls_name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        out: set[str] = set()
        for entry in classes.get(cls_name, ()):
            out |= entry.names
            if entry.base and entry.base not in seen:
                out |= names_of(entry.base, seen | {cls_name})
        return out

    checked = 0
    for path in pyx_files:
        for name, _base, body in class_bodies(path.read_text()):
            known = names_of(name) | BUILTIN_SLOTS | OBJECT_ATTRS
            for use in sorted(set(SELF_USE.findall(body))):
                checked += 1
                if use not in known:
                    problems.append(f"{path}: class {name} uses self.{use}, which no compiled "
                                    "class declares (a method only Python code defines?)")

    # each message concept once
    # a message: a compiled class with the retain/release state machine and buffer export
    message_classes = [(e.file, e.name) for es in classes.values() for e in es
                       if e.file.suffix == ".pyx"
                       and {"retain", "release", "__getbuffer__"} <= e.names]
    if len(message_classes) != 1:
        problems.append(f"expected one compiled message class, found {message_classes}")
    py_files = [p for r in roots for p in sorted(r.rglob("*.py"))] + pyx_files
    state_defs = [p for p in py_files
                  if re.search(r"^STATE_NAMES\s*(?::[^=\n]*)?=\s*\(", p.read_text(), re.M)]
    if len(state_defs) != 1:
        problems.append(f"expected one STATE_NAMES definition, found {state_defs}")
    policy_defs = [p for p in py_files
                   if re.search(r"^(RAISE\s*[:=]|RAISE\s*,\s*DROP\s*,\s*BLOCK\s*=)",
                                p.read_text(), re.M)]
    if len(policy_defs) != 1:
        problems.append(f"expected one RAISE/DROP/BLOCK definition, found {policy_defs}")
    if not problems:
        print(f"ok: {sum(len(v) for v in classes.values())} compiled class declarations, "
              f"{checked} self.NAME uses resolved; one message class "
              f"({message_classes[0][0].name}), one STATE_NAMES ({state_defs[0].name}), "
              f"one policy definition ({policy_defs[0].name})")
    return problems


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path(__file__).resolve().parent.parent / "src"]
    problems = check(roots)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
