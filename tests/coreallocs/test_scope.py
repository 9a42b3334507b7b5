"""ResourceScope: ordering, early release, error aggregation, weak references, async."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import runpy
import threading
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coreallocs import Arena, Pool, SlabAllocator
from coreallocs.errors import AllocatorClosed, DoubleRelease, UseAfterRelease
from coreallocs.scope import ResourceScope, ScopeClosed, ScopeGuard


class Res:
    """A resource that logs its release and refuses to be closed twice."""

    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.closed = False

    def close(self) -> None:
        if self.closed:
            raise AssertionError(f"{self.name} closed twice")
        self.closed = True
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} failed to close")


class Releasable:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def release(self) -> None:
        self.log.append("released")


# -- ordering -------------------------------------------------------------------
def test_own_resources_close_in_reverse_acquisition_order() -> None:
    log: list[str] = []
    with ResourceScope("s") as scope:
        for name in "abcd":
            scope.add(Res(name, log))
    assert log == ["d", "c", "b", "a"]
    assert scope.closed


def test_children_close_first_most_recent_first_then_own_resources() -> None:
    log: list[str] = []
    scope = ResourceScope("root")
    scope.add(Res("r1", log))
    first = scope.child("first")
    first.add(Res("first.a", log))
    scope.add(Res("r2", log))
    second = scope.child("second")
    second.add(Res("second.a", log))
    grandchild = second.child()
    grandchild.add(Res("grand.a", log))
    second.add(Res("second.b", log))
    scope.close()
    assert log == ["grand.a", "second.b", "second.a", "first.a", "r2", "r1"]
    assert first.closed and second.closed and grandchild.closed


# A random program builds a tree of scopes; a model predicts the close order.
Program = list[tuple[str, int]]
program_strategy = st.lists(
    st.tuples(st.sampled_from(["add", "child", "release", "close_child"]), st.integers(0, 50)),
    max_size=40,
)


@given(program=program_strategy)
def test_close_order_matches_model(program: Program) -> None:
    log: list[str] = []
    root = ResourceScope("root")
    # model node: {"scope", "items": [names...] live, "children": [nodes] open, "guards"}
    root_node: dict[str, Any] = {"scope": root, "items": [], "children": [], "guards": {}}
    nodes = [root_node]
    counter = 0
    for op, arg in program:
        open_nodes = [n for n in nodes if not n["scope"].closed]
        node = open_nodes[arg % len(open_nodes)]
        if op == "add":
            name = f"r{counter}"
            counter += 1
            node["guards"][name] = node["scope"].add(Res(name, log))
            node["items"].append(name)
        elif op == "child":
            kid = {"scope": node["scope"].child(), "items": [], "children": [], "guards": {}}
            node["children"].append(kid)
            nodes.append(kid)
        elif op == "release" and node["items"]:
            name = node["items"].pop(arg % len(node["items"]))
            node["guards"][name].release()
            assert log[-1] == name
            log.pop()
        elif op == "close_child" and node["children"]:
            kid = node["children"].pop(arg % len(node["children"]))
            before = len(log)
            kid["scope"].close()
            assert log[before:] == expected_order(kid)
            del log[before:]

    def expected_total(n: dict[str, Any]) -> int:
        return len(n["items"]) + sum(expected_total(k) for k in n["children"])

    assert root.total_count == expected_total(root_node)
    assert root.own_count == len(root_node["items"])
    want = expected_order(root_node)
    root.close()
    assert log == want
    assert all(n["scope"].closed for n in nodes)
    assert root.total_count == 0


def expected_order(node: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for kid in reversed(node["children"]):
        out += expected_order(kid)
    out += list(reversed(node["items"]))
    return out


# -- early release -------------------------------------------------------------
def test_released_early_is_not_released_again() -> None:
    log: list[str] = []
    scope = ResourceScope()
    scope.add(Res("a", log))
    guard = scope.add(Res("b", log))
    scope.add(Res("c", log))
    guard.release()
    assert log == ["b"]
    assert guard.released
    assert scope.own_count == 2
    scope.close()
    assert log == ["b", "c", "a"]


def test_guard_misuse_raises() -> None:
    scope = ResourceScope()
    guard = scope.add(Res("a", []))
    assert guard.resource.name == "a"
    guard.release()
    with pytest.raises(DoubleRelease):
        guard.release()
    with pytest.raises(DoubleRelease):
        guard.detach()
    with pytest.raises(UseAfterRelease):
        _ = guard.resource
    scope.close()


def test_guards_are_released_by_scope_close() -> None:
    scope = ResourceScope()
    guard = scope.add(Res("a", []))
    scope.close()
    assert guard.released
    with pytest.raises(DoubleRelease):
        guard.release()


def test_detach_hands_ownership_back() -> None:
    log: list[str] = []
    scope = ResourceScope()
    guard = scope.add(Res("a", log))
    res = guard.detach()
    assert res.name == "a"
    assert scope.own_count == 0
    scope.close()
    assert log == []
    assert not res.closed


def test_resource_closed_behind_the_scope_is_skipped() -> None:
    log: list[str] = []
    scope = ResourceScope()
    res = Res("a", log)
    scope.add(res)
    res.close()  # closed directly, not through the guard
    assert scope.own_count == 0
    scope.close()  # Res would raise AssertionError if closed twice
    assert log == ["a"]


def test_release_from_many_threads_runs_cleanup_once() -> None:
    calls: list[int] = []
    scope = ResourceScope()
    guard = scope.add(object(), cleanup=lambda: calls.append(1))
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        try:
            guard.release()
            outcomes.append("ok")
        except DoubleRelease:
            outcomes.append("double")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    scope.close()
    assert calls == [1]
    assert sorted(outcomes) == ["double", "double", "double", "ok"]


# -- cleanup errors --------------------------------------------------------------
def test_cleanup_errors_are_collected_after_every_resource_was_attempted() -> None:
    log: list[str] = []
    scope = ResourceScope("errs")
    scope.add(Res("a", log))
    scope.add(Res("b", log, fail=True))
    scope.add(Res("c", log))
    scope.add(Res("d", log, fail=True))
    with pytest.raises(ExceptionGroup) as info:
        scope.close()
    assert log == ["d", "c", "b", "a"]
    messages = [str(e) for e in info.value.exceptions]
    assert messages == ["d failed to close", "b failed to close"]
    assert "errs" in str(info.value)
    assert scope.closed
    scope.close()  # a closed scope closes nothing twice


def test_child_errors_nest_and_do_not_stop_the_parent() -> None:
    log: list[str] = []
    scope = ResourceScope("parent")
    scope.add(Res("p", log, fail=True))
    kid = scope.child("kid")
    kid.add(Res("k1", log))
    kid.add(Res("k2", log, fail=True))
    with pytest.raises(ExceptionGroup) as info:
        scope.close()
    assert log == ["k2", "k1", "p"]
    nested, own = info.value.exceptions
    assert isinstance(nested, ExceptionGroup)
    assert [str(e) for e in nested.exceptions] == ["k2 failed to close"]
    assert str(own) == "p failed to close"


def test_keyboard_interrupt_in_cleanup_still_releases_the_rest() -> None:
    log: list[str] = []
    scope = ResourceScope()
    scope.add(Res("a", log))
    scope.add(Res("b", log, fail=True))

    def interrupt() -> None:
        raise KeyboardInterrupt

    scope.callback(interrupt)
    scope.add(Res("c", log))
    with pytest.raises(KeyboardInterrupt) as info:
        scope.close()
    assert log == ["c", "b", "a"]
    assert isinstance(info.value.__context__, ExceptionGroup)


def test_with_body_error_still_closes_and_propagates() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="body"), ResourceScope() as scope:
        scope.add(Res("a", log))
        raise ValueError("body")
    assert log == ["a"]


def test_with_body_error_and_cleanup_error_keep_both() -> None:
    log: list[str] = []
    with pytest.raises(ExceptionGroup) as info, ResourceScope() as scope:
        scope.add(Res("a", log, fail=True))
        raise ValueError("body")
    assert isinstance(info.value.__context__, ValueError)


# -- registration kinds ----------------------------------------------------------
def test_release_method_callback_and_custom_cleanup() -> None:
    log: list[str] = []
    scope = ResourceScope()
    scope.add(Releasable(log))
    scope.callback(log.append, "callback")
    scope.add(object(), cleanup=lambda: log.append("custom"))
    scope.close()
    assert log == ["custom", "callback", "released"]


def test_enter_exits_context_manager_at_close() -> None:
    log: list[str] = []

    @contextlib.contextmanager
    def managed() -> Iterator[str]:
        log.append("enter")
        yield "value"
        log.append("exit")

    scope = ResourceScope()
    assert scope.enter(managed()) == "value"
    assert log == ["enter"]
    scope.close()
    assert log == ["enter", "exit"]


def test_registration_errors() -> None:
    scope = ResourceScope()
    with pytest.raises(TypeError, match="close"):
        scope.add(42)
    with pytest.raises(TypeError):
        scope.add(object(), cleanup="nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        scope.callback(None)  # type: ignore[arg-type]
    scope.close()
    for register in (
        lambda: scope.add(Res("a", [])),
        lambda: scope.child(),
        lambda: scope.callback(print),
        lambda: scope.allocate(SlabAllocator(), 8),
    ):
        with pytest.raises(ScopeClosed):
            register()
    assert issubclass(ScopeClosed, AllocatorClosed)


# -- allocations -----------------------------------------------------------------
def test_allocations_are_released_at_close() -> None:
    slab = SlabAllocator(max_size=256, blocks_per_class=8)
    pool = Pool(32, 4)
    arena = Arena(1024)
    with ResourceScope() as scope:
        a = scope.allocate(slab, 24)
        b = scope.allocate(pool)
        c = scope.allocate(arena, 100, align=64)
        assert c.address % 64 == 0
        assert (slab.in_use, pool.in_use) == (1, 1)
        assert scope.own_count == 3
    assert (slab.in_use, pool.in_use) == (0, 0)
    assert not (a.live or b.live or c.live)


def test_block_released_early_is_skipped_and_forgotten() -> None:
    slab = SlabAllocator(max_size=256, blocks_per_class=8)
    scope = ResourceScope()
    keep = scope.allocate(slab, 8)
    for _ in range(1000):
        scope.allocate(slab, 8).release()
    assert scope.own_count == 1
    # the registry does not grow with blocks released behind its back
    assert len(scope._entries) < 200
    scope.close()  # no DoubleRelease for the early-released blocks
    assert not keep.live
    assert slab.in_use == 0


def test_exported_block_error_is_reported_and_others_released() -> None:
    slab = SlabAllocator(max_size=256, blocks_per_class=8)
    scope = ResourceScope()
    scope.allocate(slab, 8)
    pinned = scope.allocate(slab, 8)
    view = memoryview(pinned)
    scope.allocate(slab, 8)
    with pytest.raises(ExceptionGroup) as info:
        scope.close()
    assert [type(e).__name__ for e in info.value.exceptions] == ["BufferStillExported"]
    assert slab.in_use == 1  # only the pinned block
    view.release()
    pinned.release()
    assert slab.in_use == 0


# -- counts ------------------------------------------------------------------------
def test_own_and_total_counts() -> None:
    scope = ResourceScope()
    scope.add(Res("a", []))
    kid = scope.child()
    kid.add(Res("b", []))
    g = kid.add(Res("c", []))
    grand = kid.child()
    grand.add(Res("d", []))
    assert (scope.own_count, scope.total_count) == (1, 4)
    assert (kid.own_count, kid.total_count) == (2, 3)
    g.release()
    assert scope.total_count == 3
    grand.close()
    assert scope.total_count == 2
    assert kid.children == ()
    kid.close()
    assert scope.children == ()
    assert (scope.own_count, scope.total_count) == (1, 1)
    scope.close()
    assert (scope.own_count, scope.total_count) == (0, 0)


def test_child_closed_alone_leaves_parent_open() -> None:
    log: list[str] = []
    scope = ResourceScope()
    scope.add(Res("p", log))
    kid = scope.child()
    assert kid.parent is scope
    kid.add(Res("k", log))
    kid.close()
    assert log == ["k"]
    assert not scope.closed
    scope.close()
    assert log == ["k", "p"]


# -- weak references ---------------------------------------------------------------
def test_guard_does_not_keep_its_scope_alive() -> None:
    log: list[str] = []
    scope = ResourceScope("dropped")
    guard = scope.add(Res("a", log))
    scope_ref = weakref.ref(scope)
    with pytest.warns(ResourceWarning, match="dropped"):
        del scope
        gc.collect()
    assert scope_ref() is None
    assert guard.scope is None
    assert guard.released  # the collected scope released what it owned
    assert log == ["a"]
    with pytest.raises(DoubleRelease):
        guard.release()


def test_dropped_scope_does_not_keep_guards_alive() -> None:
    scope = ResourceScope()
    guard = scope.add(Res("a", []))
    guard_ref = weakref.ref(guard)
    del guard
    gc.collect()
    assert guard_ref() is not None  # the open scope still owns the registration
    with pytest.warns(ResourceWarning):
        del scope
        gc.collect()
    assert guard_ref() is None


def test_dropping_a_guard_does_not_release_the_resource() -> None:
    log: list[str] = []
    scope = ResourceScope()
    scope.add(Res("a", log))  # guard discarded at once
    gc.collect()
    assert log == []
    assert scope.own_count == 1
    scope.close()
    assert log == ["a"]


def test_child_does_not_keep_parent_alive_and_parent_owns_child() -> None:
    log: list[str] = []
    parent = ResourceScope()
    kid = parent.child()
    kid.add(Res("k", log))
    parent_ref = weakref.ref(parent)
    with pytest.warns(ResourceWarning):
        del parent
        gc.collect()
    assert parent_ref() is None
    assert kid.parent is None
    assert kid.closed
    assert log == ["k"]


def test_closed_scope_collection_is_silent() -> None:
    scope = ResourceScope()
    scope.add(Res("a", []))
    scope.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del scope
        gc.collect()


# -- asyncio -----------------------------------------------------------------------
class AsyncRes:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        self.log.append(self.name)


@pytest.mark.timeout(10)
def test_async_with_awaits_async_cleanups_in_order() -> None:
    log: list[str] = []

    async def main() -> None:
        async with ResourceScope() as scope:
            scope.add(Res("sync", log))
            scope.add(AsyncRes("async", log))
            kid = scope.child()
            kid.add(AsyncRes("kid", log))

            async def coro_cb() -> None:
                log.append("coro-callback")

            scope.callback(coro_cb)

            @contextlib.asynccontextmanager
            async def managed() -> Any:
                yield 1
                log.append("acm-exit")

            assert await scope.aenter(managed()) == 1

    asyncio.run(main())
    assert log == ["kid", "acm-exit", "coro-callback", "async", "sync"]


@pytest.mark.timeout(10)
def test_async_guard_release() -> None:
    log: list[str] = []

    async def main() -> None:
        scope = ResourceScope()
        guard: ScopeGuard[AsyncRes] = scope.add(AsyncRes("a", log))
        await guard.arelease()
        await scope.aclose()

    asyncio.run(main())
    assert log == ["a"]


def test_sync_close_of_async_cleanup_reports_it_without_warning() -> None:
    log: list[str] = []
    scope = ResourceScope()
    scope.add(AsyncRes("a", log))
    scope.add(Res("b", log))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        with pytest.raises(ExceptionGroup) as info:
            scope.close()
        gc.collect()
    assert log == ["b"]
    assert "aclose" in str(info.value.exceptions[0])


@pytest.mark.timeout(10)
def test_async_cleanup_errors_aggregate() -> None:
    log: list[str] = []

    async def main() -> None:
        async with ResourceScope() as scope:
            scope.add(Res("a", log, fail=True))
            scope.add(AsyncRes("b", log))

            async def boom() -> None:
                raise OSError("async boom")

            scope.callback(boom)

    with pytest.raises(ExceptionGroup) as info:
        asyncio.run(main())
    assert log == ["b", "a"]
    assert [type(e) for e in info.value.exceptions] == [OSError, RuntimeError]


def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "raii_scope.py"
    runpy.run_path(str(example), run_name="__main__")
    assert "request scope closed" in capsys.readouterr().out


@pytest.mark.timeout(10)
def test_cancellation_during_async_close_still_releases_the_rest() -> None:
    log: list[str] = []

    async def cancelled() -> None:
        raise asyncio.CancelledError

    async def main() -> None:
        scope = ResourceScope()
        scope.add(Res("a", log))
        scope.callback(cancelled)
        scope.add(Res("b", log, fail=True))
        with pytest.raises(asyncio.CancelledError) as info:
            await scope.aclose()
        assert isinstance(info.value.__context__, ExceptionGroup)

    asyncio.run(main())
    assert log == ["b", "a"]


def test_enter_on_closed_scope_does_not_enter() -> None:
    entered: list[int] = []

    @contextlib.contextmanager
    def managed() -> Iterator[None]:
        entered.append(1)
        yield

    scope = ResourceScope()
    scope.close()
    with pytest.raises(ScopeClosed):
        scope.enter(managed())
    assert entered == []


def test_scope_owns_an_object_pool() -> None:
    from coreallocs.object_pool import ObjectPool

    with ResourceScope() as scope:
        pool = scope.add(ObjectPool(dict, max_size=2, prefill=2)).resource
        guard = scope.add(pool.acquire())  # a pooled loan released by the scope
        assert guard.scope is scope
        assert pool.in_use == 1
    assert pool.closed
    assert (pool.in_use, pool.idle) == (0, 0)
    assert pool.stats().dropped == 2
