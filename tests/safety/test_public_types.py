"""Every public type of coreallocs, hftalloc and framealloc against duplication and misuse.

For each class in the ``__all__`` of ``coreallocs``, ``hftalloc``, ``hftalloc.shm``,
``hftalloc.net``, ``hftalloc.bridge`` and ``framealloc``, plus the compiled classes their
objects hand out (messages, claims, blocks, marks, guards), a factory below builds a live
instance. Then, in a child interpreter, each (type, operation) case runs:

- ``copy.copy``, ``copy.deepcopy``: TypeError, the object itself (immutable values), or a
  copy that shares no mutable state with the original;
- ``pickle``: TypeError, or a round trip to an equal object of the same type;
- ``weakref.ref``: works, or a clean TypeError;
- subclassing: allowed, or a clean TypeError;
- ``Type.__new__(Type)`` without the constructor, then every public method (called with
  plausible arguments), property and protocol method, then collection: a Python exception
  is fine, a crash, a hang, a SystemError or an exception escaping a finalizer is not. For
  coreallocs' own types the exception must also name the problem (no AttributeError from a
  missing internal attribute).

The child reports each case to a results file before and after running it, so a case that
crashes the child is named precisely; the parent restarts the child after that case. One
pass runs every case once (``test_public_type[...]`` reads its type's results).
Run this file as a script (``python test_public_types.py RESULTS START``) to be the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import enum
import functools
import gc
import importlib
import inspect
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import types
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

MODULES = ("coreallocs", "hftalloc", "hftalloc.shm", "hftalloc.net", "hftalloc.bridge",
           "framealloc")
PACKAGES = ("coreallocs", "hftalloc", "framealloc")
STRICT = ("coreallocs",)  # packages whose half-built objects must raise their own errors
PROTOCOL = ("__len__", "__iter__", "__next__", "__bool__", "__hash__", "__repr__", "__str__",
            "__enter__", "__exit__", "__aenter__", "__aexit__", "__getitem__", "__contains__",
            "__buffer__", "__call__", "__eq__")
UNCLEAR = (AttributeError, NameError, UnboundLocalError, AssertionError, RecursionError)
CASE_SECONDS = 10


# -- factories: one live instance per type (they run in the child only) ------------------------

class Env:
    """What factories share in the child: the objects to keep alive, cleanups, unique names."""

    def __init__(self) -> None:
        self.keep: list[Any] = []
        self.cleanups: list[Callable[[], object]] = []
        self.counter = 0

    def name(self) -> str:
        self.counter += 1
        return f"walker-{os.getpid()}-{self.counter}"

    def hold(self, obj: Any) -> Any:
        self.keep.append(obj)
        return obj

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()


def _bus(env: Env) -> Any:
    from hftalloc import MessageBus

    bus = env.hold(MessageBus())
    env.cleanups.append(bus.close)
    return bus


def _delivered(bus: Any) -> Any:
    """A message retained by a subscriber (live after the callback)."""
    got: list[Any] = []
    bus.subscribe("walker.topic", lambda msg: got.append(msg.retain()))
    bus.publish("walker.topic", b"12345678")
    return got[0]


def _kept_batch(bus: Any) -> Any:
    """The batch a batch subscriber kept past its call (over: it holds no message)."""
    got: list[Any] = []
    bus.subscribe("walker.topic", got.append, batch=True)
    bus.publish_many("walker.topic", [b"12345678", b"abc"])
    return got[0]


def _channel(env: Env) -> tuple[Any, Any, Any]:
    from hftalloc.shm import Channel, ChannelReader, ChannelWriter

    name = env.name()
    channel = env.hold(Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1))
    writer = env.hold(ChannelWriter(name))
    reader = env.hold(ChannelReader(name))
    env.cleanups += [channel.close, writer.close, reader.close]
    return channel, writer, reader


def _shm_message(env: Env) -> Any:
    _, writer, reader = _channel(env)
    got: list[Any] = []
    reader.subscribe(">", lambda msg: got.append(msg.retain()))
    writer.publish("walker.topic", b"12345678")
    reader.poll()
    return got[0]


def _pool_guard(env: Env) -> Any:
    from coreallocs import ObjectPool

    return env.hold(ObjectPool(list, 2)).acquire()


def _scope_guard(env: Env) -> Any:
    from coreallocs import ResourceScope

    scope = env.hold(ResourceScope("walker"))
    env.cleanups.append(scope.close)
    return scope.callback(lambda: None)


def _frames(env: Env) -> Any:
    from framealloc import FrameAllocator

    frames = env.hold(FrameAllocator(4096))
    env.cleanups.append(frames.close)
    return frames


class WalkerRecord:
    """A frame-scoped record type (``__slots__`` only, as FrameObjects requires)."""

    __slots__ = ("__weakref__", "kind", "value")


def _frame_objects(env: Env) -> Any:
    return env.hold(_frames(env).objects(WalkerRecord))


def _loop(env: Env) -> Any:
    from framealloc import FixedStepClock, GameLoop

    return GameLoop(lambda dt, frame: None, allocator=_frames(env), dt=1.0,
                    clock=FixedStepClock(1.0))


def _feed_listener(env: Env) -> Any:
    from hftalloc.net import FeedListener

    return FeedListener(_bus(env))


def _zmq_bridge(env: Env) -> Any:
    from hftalloc.net import ZmqBridge

    bridge = ZmqBridge(_bus(env))
    env.cleanups.append(bridge.close)
    return bridge


def _shm_bridge(env: Env) -> Any:
    from hftalloc.bridge import ShmBridge

    bridge = ShmBridge(_bus(env))
    env.cleanups.append(bridge.close)
    return bridge


def _c(path: str) -> Callable[[Env], Any]:
    """Factory from an expression over the packages' public names (``coreallocs.X``)."""
    def make(env: Env) -> Any:
        namespace = {name: importlib.import_module(name) for name in PACKAGES}
        namespace.update({"hftalloc_shm": importlib.import_module("hftalloc.shm"),
                          "hftalloc_net": importlib.import_module("hftalloc.net"),
                          "env": env})
        return env.hold(eval(path, namespace))
    return make


FACTORIES: dict[str, Callable[[Env], Any]] = {
    # coreallocs
    "coreallocs.Pool": _c("coreallocs.Pool(64, 4)"),
    "coreallocs.SlabAllocator": _c("coreallocs.SlabAllocator()"),
    "coreallocs.Arena": _c("coreallocs.Arena(256)"),
    "coreallocs.Block": _c("env.hold(coreallocs.Pool(64, 4)).allocate()"),
    "coreallocs.Block(system)": _c("env.hold(coreallocs.SlabAllocator(8, 64, fallback='system'))"
                                   ".allocate(100)"),
    "coreallocs.Block(arena)": _c("env.hold(coreallocs.Arena(256)).allocate(16)"),
    "coreallocs.Mark": _c("env.hold(coreallocs.Arena(256)).mark()"),
    "coreallocs.Box": _c("env.hold(coreallocs.SlabAllocator()).box('<qd', (1, 2.0))"),
    "coreallocs.ObjectPool": _c("coreallocs.ObjectPool(list, 4, prefill=1)"),
    "coreallocs.PooledObject": _pool_guard,
    "coreallocs.ObjectPoolStats": _c("coreallocs.ObjectPool(list, 4).stats()"),
    "coreallocs.AllocatorStats": _c("coreallocs.Pool(64, 4).stats"),
    "coreallocs.ResourceScope": _c("coreallocs.ResourceScope('walker')"),
    "coreallocs.ScopeGuard": _scope_guard,
    # hftalloc
    "hftalloc.MessageAllocator": _c("hftalloc.MessageAllocator(4)"),
    "hftalloc.MessageBus": _bus,
    "hftalloc.Subscription": lambda env: _bus(env).subscribe("walker.>", lambda msg: None),
    "hftalloc.Message(delivered)": lambda env: _delivered(_bus(env)),
    "hftalloc.Message(claimed)": lambda env: env.hold(_bus(env).claim("walker.topic", 16)),
    "hftalloc.MessageBatch(kept)": lambda env: _kept_batch(_bus(env)),
    "hftalloc.BusStats": lambda env: _bus(env).stats(),
    "hftalloc.TopicStats": lambda env: next(iter(_published_stats(env).topics.values())),
    "hftalloc.Histogram": _c("hftalloc.Histogram()"),
    "hftalloc.LatencySummary": _c("hftalloc.Histogram().summary()"),
    # hftalloc.shm
    "hftalloc.shm.Layout": _c("hftalloc_shm.Layout(ring_capacity=8, blocks_per_class=4, "
                              "num_classes=1)"),
    "hftalloc.shm.Channel": lambda env: _channel(env)[0],
    "hftalloc.shm.ChannelWriter": lambda env: _channel(env)[1],
    "hftalloc.shm.ChannelReader": lambda env: _channel(env)[2],
    "hftalloc.shm.ChannelStats": lambda env: _channel(env)[1].stats(),
    "hftalloc.shm.ShmClaim": lambda env: env.hold(_channel(env)[1].claim("walker.topic", 16)),
    "hftalloc.shm.ShmMessage": _shm_message,
    # hftalloc.net, hftalloc.bridge
    "hftalloc.net.LengthPrefixed": _c("hftalloc_net.LengthPrefixed()"),
    "hftalloc.net.FixedSize": _c("hftalloc_net.FixedSize(8, 'walker.topic')"),
    "hftalloc.net.FeedListener": _feed_listener,
    "hftalloc.net.FeedStats": lambda env: _feed_listener(env).stats,
    "hftalloc.net.BusWriter": lambda env: _writer(env),
    "hftalloc.net.ZmqBridge": _zmq_bridge,
    "hftalloc.bridge.BusBridge": lambda env: importlib.import_module("hftalloc.bridge")
    .BusBridge(_bus(env)),
    "hftalloc.bridge.ShmBridge": _shm_bridge,
    # framealloc
    "framealloc.FrameAllocator": _frames,
    "framealloc.FrameAllocatorStats": lambda env: _frames(env).stats,
    "framealloc.PersistentArea": _c("framealloc.PersistentArea()"),
    "framealloc.Frame": lambda env: importlib.import_module("framealloc").Frame(_frames(env), 1.0),
    "framealloc.GameLoop": _loop,
    "framealloc.FrameGC": _c("framealloc.FrameGC('frame')"),
    "framealloc.GCTotals": _c("framealloc.GCTotals()"),
    "framealloc.FrameObjects": _frame_objects,
    "framealloc.LoopStats": _c("framealloc.LoopStats()"),
    "framealloc.ManualClock": _c("framealloc.ManualClock()"),
    "framealloc.FixedStepClock": _c("framealloc.FixedStepClock(0.5)"),
    "framealloc.Block(frame)": lambda env: _frames(env).allocate(16),
}


def _published_stats(env: Env) -> Any:
    bus = _bus(env)
    bus.subscribe("walker.topic", lambda msg: None)
    bus.publish("walker.topic", b"x")
    return bus.stats()


def _writer(env: Env) -> Any:
    from hftalloc.net import BusWriter

    return BusWriter(_bus(env), "walker.>")


def _exception_factory(cls: type[BaseException]) -> Callable[[Env], Any]:
    return lambda env: cls("walker message")


def public_classes() -> dict[str, type]:
    """Every class in the ``__all__`` of MODULES, by ``module.Name``."""
    found: dict[str, type] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if isinstance(obj, type):
                found[f"{module_name}.{name}"] = obj
    return found


def registry() -> dict[str, Callable[[Env], Any]]:
    """FACTORIES plus one factory per public exception class (deduplicated by class)."""
    out = dict(FACTORIES)
    seen: set[type] = set()
    for key, cls in sorted(public_classes().items()):
        if issubclass(cls, BaseException) and cls not in seen:
            seen.add(cls)
            out[key] = _exception_factory(cls)
    return dict(sorted(out.items()))


# -- the checks (child) ------------------------------------------------------------------------

class Failure(Exception):
    """One case failed; the message says how."""


_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, range, type,
              types.FunctionType, types.BuiltinFunctionType, types.ModuleType, enum.Enum,
              functools.partial, type(Ellipsis), types.MethodDescriptorType)


def _state_of(obj: Any) -> Iterator[tuple[str, Any]]:
    """The objects `obj` references (attribute values, container items), one level deep."""
    referents = gc.get_referents(obj)
    attrs = getattr(obj, "__dict__", None)
    for value in referents:
        if value is attrs or value is type(obj):
            continue
        yield f"<referent {type(value).__name__}>", value
    if isinstance(attrs, dict):
        yield from ((f".{k}", v) for k, v in attrs.items())
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                with contextlib.suppress(Exception):
                    yield f".{slot}", object.__getattribute__(obj, slot)


def _is_value(obj: Any) -> bool:
    """Frozen dataclasses, named tuples and exceptions: plain values whose shallow copies
    may share their items (copy.copy semantics); deepcopy must still share nothing."""
    params = getattr(type(obj), "__dataclass_params__", None)
    return (params is not None and params.frozen) or isinstance(obj, tuple | BaseException)


def _mutable(value: Any) -> bool:
    if isinstance(value, tuple):
        return any(_mutable(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and _is_value(value):
        return any(_mutable(getattr(value, f.name, None)) for f in dataclasses.fields(value))
    try:
        import numpy as np

        if isinstance(value, np.dtype | np.generic):
            return False
    except ImportError:
        pass
    return not isinstance(value, _IMMUTABLE)


def _shared(original: Any, clone: Any) -> list[str]:
    """Mutable objects that both the original and the clone reference."""
    mine = {id(v): label for label, v in _state_of(original) if _mutable(v)}
    return sorted({mine[id(v)] for _, v in _state_of(clone) if id(v) in mine and _mutable(v)})


def check_copy(obj: Any, deep: bool) -> str:
    try:
        clone = copy.deepcopy(obj) if deep else copy.copy(obj)
    except TypeError as exc:
        return f"refused: {exc}"
    except Exception as exc:
        raise Failure(f"raised {type(exc).__name__} instead of TypeError: {exc}") from None
    if clone is obj:
        return "returns the object itself"
    if type(clone) is not type(obj):
        raise Failure(f"the copy is a {type(clone).__name__}, not a {type(obj).__name__}")
    shared = [] if not deep and _is_value(obj) else _shared(obj, clone)
    if shared:
        raise Failure(f"the copy shares mutable internal state with the original: {shared}")
    return "copies"


def _structure(obj: Any, depth: int = 0) -> Any:
    """A comparable picture of an object's state (for pickle round trips)."""
    if depth > 6:
        return "..."
    if isinstance(obj, int | float | complex | str | bytes | bool | type(None) | type):
        return obj
    try:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes())
    except ImportError:
        pass
    if isinstance(obj, dict):
        return {k: _structure(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=repr) if isinstance(obj, set | frozenset) else obj
        return (type(obj).__name__, [_structure(v, depth + 1) for v in items])
    if isinstance(obj, BaseException):
        return (type(obj).__name__, _structure(obj.args, depth + 1),
                _structure(vars(obj), depth + 1))
    if type(obj).__eq__ is not object.__eq__:
        return obj
    state = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                state[slot] = getattr(obj, slot)
    return (type(obj).__name__, _structure(state, depth + 1))


def check_pickle(obj: Any) -> str:
    notes = []
    for protocol in (pickle.DEFAULT_PROTOCOL, 0):
        try:
            data = pickle.dumps(obj, protocol=protocol)
        except TypeError as exc:
            notes.append(f"protocol {protocol} refused: {exc}")
            continue
        except Exception as exc:
            raise Failure(f"pickle.dumps(protocol={protocol}) raised {type(exc).__name__} "
                          f"instead of TypeError (it tried to pickle internal state): {exc}"
                          ) from None
        try:
            clone = pickle.loads(data)
        except Exception as exc:
            raise Failure(f"pickles (protocol {protocol}) but does not unpickle: "
                          f"{type(exc).__name__}: {exc}") from None
        if type(clone) is not type(obj):
            raise Failure(f"unpickles as {type(clone).__name__}, not {type(obj).__name__}")
        if _structure(clone) != _structure(obj):
            raise Failure(f"the unpickled object differs from the original: "
                          f"{_structure(clone)!r} != {_structure(obj)!r}")
        if isinstance(obj, BaseException) and str(clone) != str(obj):
            raise Failure(f"the unpickled exception reads {str(clone)!r}, not {str(obj)!r}")
        notes.append(f"protocol {protocol} round-trips")
    return "; ".join(notes)


def check_weakref(obj: Any) -> str:
    try:
        ref = weakref.ref(obj)
    except TypeError as exc:
        return f"refused: {exc}"
    if ref() is not obj:
        raise Failure("weakref.ref(obj)() is not obj")
    return "works"


def check_subclass(cls: type) -> str:
    try:
        sub = type(f"Walker{cls.__name__}", (cls,), {})
    except TypeError as exc:
        return f"refused: {exc}"
    with contextlib.suppress(Exception):
        inst = sub.__new__(sub)
        repr(inst)
        del inst
    gc.collect()
    return "allowed"


def _argument(name: str, env: Env) -> Any:
    """A plausible value for a parameter called `name`."""
    from coreallocs import Arena, Pool

    lowered = name.lower()
    table: list[tuple[tuple[str, ...], Callable[[], Any]]] = [
        (("timeout", "dt", "seconds", "step", "sleep", "delay", "interval"), lambda: 0.01),
        (("pattern",), lambda: "walker.>"),
        (("topic",), lambda: "walker.topic"),
        (("name", "channel", "endpoint", "address", "host"), lambda: env.name()),
        (("data", "payload", "value", "buffer", "source", "message", "msg", "raw"),
         lambda: b"12345678"),
        (("predicate", "stop"), lambda: lambda *a, **k: True),
        (("callback", "fn", "func", "factory", "update", "render", "reset", "on_", "cleanup",
          "handler"), lambda: lambda *a, **k: None),
        (("block", "blk"), lambda: env.hold(Pool(16, 2)).allocate()),
        (("mark",), lambda: env.hold(Arena(64)).mark()),
        (("allocator", "slab"), lambda: env.hold(Pool(16, 2))),
        (("shape",), lambda: (2,)),
        (("dtype",), lambda: "f8"),
        (("layout", "fmt", "format"), lambda: "<q"),
        (("align",), lambda: 8),
        (("other", "array", "out"), lambda: __import__("numpy").zeros(2)),
        (("exc_type", "exc", "tb", "traceback"), lambda: None),
        (("protocol",), lambda: 2),
        (("memo",), lambda: {}),
    ]
    for keys, make in table:
        if any(key in lowered for key in keys):
            return make()
    return 8


def _calls(fn: Callable[..., Any], env: Env) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Argument sets to try: none, then the required parameters with plausible values."""
    attempts: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), {})]
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return [*attempts, ((8,), {}), ((b"12345678",), {})]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.default is not inspect.Parameter.empty or param.kind in (
                param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = _argument(param.name, env)
        if param.kind == param.KEYWORD_ONLY:
            kwargs[param.name] = value
        else:
            args.append(value)
    if args or kwargs:
        attempts.append((tuple(args), kwargs))
    return attempts


def _settle(result: Any) -> None:
    """Run a coroutine a half-built object returned (briefly); close other awaitables."""
    if inspect.iscoroutine(result):
        with contextlib.suppress(BaseException):
            asyncio.run(asyncio.wait_for(result, 1.0))
    elif inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _judge(exc: BaseException, cls: type) -> None:
    if isinstance(exc, SystemError):
        raise Failure(f"SystemError (a C-level bug): {exc}")
    if not isinstance(exc, Exception):
        raise Failure(f"raised {type(exc).__name__} (not an Exception): {exc}")
    if cls.__module__.split(".")[0] in STRICT and isinstance(exc, UNCLEAR):
        raise Failure(f"unclear error from a half-built object: {type(exc).__name__}: {exc}")


def check_member(cls: type, inst: Any, name: str, env: Env) -> str:
    """Use one public member of a half-built instance."""
    static = inspect.getattr_static(cls, name)
    outcomes = []
    try:
        if name == "__buffer__":
            memoryview(inst).release()
            return "exported a buffer"
        value = getattr(inst, name)
    except BaseException as exc:
        _judge(exc, cls)
        return f"access raised {type(exc).__name__}"
    if not callable(value) or isinstance(static, property | types.GetSetDescriptorType
                                         | types.MemberDescriptorType):
        return "read"
    for args, kwargs in _calls(value, env):
        try:
            _settle(value(*args, **kwargs))
            outcomes.append("returned")
        except BaseException as exc:
            _judge(exc, cls)
            outcomes.append(type(exc).__name__)
    return "call " + "/".join(outcomes)


def member_names(cls: type) -> list[str]:
    names = [n for n in dir(cls) if not n.startswith("_")]
    names += [n for n in PROTOCOL if n in dir(cls) and getattr(cls, n, None) is not None
              and getattr(cls, n) is not getattr(object, n, None)]
    return sorted(set(names))


def _type_for(key: str, env: Env) -> tuple[Any, type]:
    obj = registry()[key](env)
    return obj, type(obj)


def child(results: str, start: int) -> None:
    """Run every case from number `start`, logging 'start' and the outcome of each."""
    env = Env()
    unraisable: list[str] = []
    sys.unraisablehook = lambda hook: unraisable.append(
        f"{type(hook.exc_value).__name__}: {hook.exc_value} (in {hook.object!r})")

    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no result after {CASE_SECONDS} s")

    signal.signal(signal.SIGALRM, alarm)
    fd = os.open(results, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def log(**record: Any) -> None:
        os.write(fd, (json.dumps(record) + "\n").encode())

    keys = list(registry())
    walked_types: set[type | None] = set()
    number = 0
    for key in keys:
        for op in ("copy", "deepcopy", "pickle", "weakref", "subclass", "new"):
            if op != "new":
                if number >= start:
                    _run_case(number, key, op, env, unraisable, log)
                number += 1
                continue
            # "new": Type.__new__(Type), then one case per member, then collection
            # (once per type: several keys may make the same type, e.g. Block kinds)
            factory_error = ""
            try:
                cls = _type_for(key, env)[1]
            except BaseException as exc:
                cls = None
                factory_error = f"{type(exc).__name__}: {exc}"
            if cls is not None and cls in walked_types:
                ops = []
            else:
                walked_types.add(cls)
                names = member_names(cls) if cls is not None else []
                ops = ["new", *(f"new.{n}" for n in names), "new.collect"]
            holder: dict[str, Any] = {}
            for sub in ops:
                if number >= start:
                    if cls is None:
                        log(n=number, key=key, op=sub, status="start")
                        log(n=number, key=key, op=sub, status="fail",
                            detail=f"the factory failed: {factory_error}")
                    else:
                        _run_new_case(number, key, cls, sub, holder, env, unraisable, log)
                number += 1
    log(status="done", total=number)
    signal.alarm(0)
    env.close()


def _run_case(number: int, key: str, op: str, env: Env, unraisable: list[str],
              log: Callable[..., None]) -> None:
    log(n=number, key=key, op=op, status="start")
    try:
        signal.alarm(CASE_SECONDS)
        obj, cls = _type_for(key, env)
        if op in ("copy", "deepcopy"):
            detail = check_copy(obj, op == "deepcopy")
        elif op == "pickle":
            detail = check_pickle(obj)
        elif op == "weakref":
            detail = check_weakref(obj)
        else:
            detail = check_subclass(cls)
        del obj
        gc.collect()
        signal.alarm(0)
        _finish(number, key, op, detail, unraisable, log)
    except Failure as exc:
        signal.alarm(0)
        log(n=number, key=key, op=op, status="fail", detail=str(exc))
    except BaseException as exc:
        signal.alarm(0)
        log(n=number, key=key, op=op, status="fail",
            detail=f"{type(exc).__name__} outside the checked call: {exc}")


def _run_new_case(number: int, key: str, cls: type, op: str, holder: dict[str, Any], env: Env,
                  unraisable: list[str], log: Callable[..., None]) -> None:
    log(n=number, key=key, op=op, status="start")
    try:
        signal.alarm(CASE_SECONDS)
        if "inst" not in holder and "refused" not in holder:
            try:
                holder["inst"] = cls.__new__(cls)
            except Exception as exc:
                holder["refused"] = f"{type(exc).__name__}: {exc}"
        if op == "new":
            detail = (f"refused: {holder['refused']}" if "refused" in holder
                      else "made an instance")
        elif "refused" in holder:
            detail = "skipped (no instance)"
        elif op == "new.collect":
            holder.pop("inst")
            gc.collect()
            detail = "collected"
        else:
            detail = check_member(cls, holder["inst"], op[len("new."):], env)
        signal.alarm(0)
        _finish(number, key, op, detail, unraisable, log)
    except Failure as exc:
        signal.alarm(0)
        log(n=number, key=key, op=op, status="fail", detail=str(exc))
    except BaseException as exc:
        signal.alarm(0)
        log(n=number, key=key, op=op, status="fail", detail=f"{type(exc).__name__}: {exc}")


def _finish(number: int, key: str, op: str, detail: str, unraisable: list[str],
            log: Callable[..., None]) -> None:
    if unraisable:
        detail = f"an exception escaped a finalizer: {unraisable[:2]}"
        unraisable.clear()
        log(n=number, key=key, op=op, status="fail", detail=detail)
    else:
        log(n=number, key=key, op=op, status="ok", detail=detail)


# -- the parent: run the child until every case reported, restarting after crashes -------------

def _cleanup_segments(pid: int) -> None:
    from hftalloc.shm import segment

    for name in segment.list_segments():
        if f"walker-{pid}-" in name:
            with contextlib.suppress(Exception):
                segment.unlink(name)


# seconds for one walker child; AddressSanitizer builds run several times slower
_CHILD_TIMEOUT = 600 * (6 if "libasan" in os.environ.get("LD_PRELOAD", "") else 1)


def walk() -> dict[str, list[dict[str, Any]]]:
    """Results of every case, by type key (each a dict: n, op, status, detail)."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    start, total = 0, None
    with tempfile.TemporaryDirectory() as tmp:
        while total is None:
            results = Path(tmp) / f"results-{start}.jsonl"
            proc = subprocess.Popen([sys.executable, __file__, str(results), str(start)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                _, stderr = proc.communicate(timeout=_CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
            _cleanup_segments(proc.pid)
            open_case: dict[str, Any] | None = None
            lines = results.read_text().splitlines() if results.exists() else []
            for line in lines:
                record = json.loads(line)
                if record["status"] == "done":
                    total = record["total"]
                elif record["status"] == "start":
                    open_case = record
                else:
                    by_key.setdefault(record["key"], []).append(record)
                    open_case = None
            if total is not None:
                break
            if open_case is None:
                raise RuntimeError(f"the walker child exited {proc.returncode} before any "
                                   f"case:\n{stderr[-3000:]}")
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited with {proc.returncode}")
            open_case.update(status="fail", detail=f"the interpreter crashed ({how}): "
                                                   f"{stderr.strip()[-400:]}")
            by_key.setdefault(open_case["key"], []).append(open_case)
            start = open_case["n"] + 1
    return by_key


@pytest.fixture(scope="module")
def walked() -> dict[str, list[dict[str, Any]]]:
    return walk()


def test_every_public_class_has_a_factory() -> None:
    known = registry()
    missing = [key for key, cls in public_classes().items()
               if key not in known and not issubclass(cls, BaseException)]
    assert not missing, f"add a factory for {missing}"


def test_the_walker_runs_every_case(walked: dict[str, list[dict[str, Any]]]) -> None:
    assert set(walked) == set(registry())
    counts = {key: len(records) for key, records in walked.items()}
    assert all(n >= 5 for n in counts.values()), counts  # copy, deepcopy, pickle, weakref, subclass
    numbers = sorted(r["n"] for records in walked.values() for r in records)
    assert numbers == list(range(len(numbers))), "a case is missing or ran twice"


@pytest.mark.parametrize("key", list(registry()))
def test_public_type(key: str, walked: dict[str, list[dict[str, Any]]]) -> None:
    failures = [f"{key}: {r['op']}: {r['detail']}" for r in walked.get(key, ())
                if r["status"] != "ok"]
    assert not failures, "\n".join(failures)


def discover() -> list[str]:
    """Package types reachable from the factories' objects (their public properties and the
    items of containers those return) that no factory makes: they need a factory."""
    env = Env()
    made: set[type] = set()
    seen: dict[type, str] = {}
    for key, factory in registry().items():
        obj = factory(env)
        made.add(type(obj))
        for name in member_names(type(obj)):
            static = inspect.getattr_static(type(obj), name)
            if not isinstance(static, property | types.GetSetDescriptorType
                              | types.MemberDescriptorType):
                continue
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            items = list(value.values()) if isinstance(value, dict) else (
                list(value) if isinstance(value, list | tuple | set) else [value])
            for item in [value, *items]:
                cls = type(item)
                if cls.__module__.split(".")[0] in PACKAGES and not isinstance(item, type):
                    seen.setdefault(cls, f"{key}.{name}")
    env.close()
    return sorted(f"{cls.__module__}.{cls.__qualname__} (from {where})"
                  for cls, where in seen.items() if cls not in made)


def test_every_reachable_package_type_has_a_factory() -> None:
    result = subprocess.run([sys.executable, __file__, "--discover"], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    missing = json.loads(result.stdout.strip().splitlines()[-1])
    assert not missing, f"types reachable from public objects without a factory: {missing}"


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()
    if sys.argv[1] == "--discover":
        print(json.dumps(discover()))
    else:
        child(sys.argv[1], int(sys.argv[2]))
