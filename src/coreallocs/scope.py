"""ResourceScope: hierarchical ownership of allocations and other resources.

A scope owns what is registered in it (blocks, objects with ``close()`` /
``release()``, cleanup callables) and its child scopes. ``close()`` closes the
children first (most recent first), then releases its own resources in reverse
order of acquisition. Every resource is attempted even when some cleanups fail;
the failures are raised together as an :class:`ExceptionGroup` at the end.

Registration returns a :class:`ScopeGuard` that holds only a weak reference to
its scope: guards never keep a scope alive. A scope dropped without ``close()``
is closed by the garbage collector (with a :class:`ResourceWarning`).
"""

from __future__ import annotations

import inspect
import sys
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Generic, TypeVar, cast

from coreallocs._core import Block
from coreallocs.errors import AllocatorClosed, DoubleRelease, NotInitialized, UseAfterRelease

__all__ = ["ResourceScope", "ScopeClosed", "ScopeGuard"]

T = TypeVar("T")
Cleanup = Callable[[], Any]


class ScopeClosed(AllocatorClosed):
    """A resource was registered in (or a child opened from) a closed scope."""


def _cleanup_for(resource: object) -> Cleanup:
    """The callable that releases `resource`: close(), else release(), else aclose()."""
    for name in ("close", "release", "aclose"):
        method = getattr(resource, name, None)
        if callable(method):
            return method  # type: ignore[no-any-return]
    raise TypeError(
        f"{type(resource).__name__} has no close()/release()/aclose(); "
        f"pass cleanup= or register a callable with scope.callback()"
    )


def _already_released(resource: object) -> bool:
    """True when a resource was visibly released behind the scope's back."""
    if isinstance(resource, Block):
        return not resource.live
    return getattr(resource, "closed", False) is True


class ScopeGuard(Generic[T]):
    """Handle to one resource registered in a :class:`ResourceScope`.

    ``release()`` releases the resource now (the scope will not release it again);
    ``detach()`` takes it out of the scope without releasing it. The guard holds
    the scope weakly; dropping the guard does not release the resource (the
    scope owns it). Guards cannot be copied or pickled (TypeError).
    """

    __slots__ = ("__weakref__", "_cleanup", "_key", "_released", "_resource", "_scope_ref")

    def __getattr__(self, name: str) -> Any:
        # Only reached when a slot was never set: ScopeGuard.__new__ without __init__.
        if name in ScopeGuard.__slots__:
            raise NotInitialized("this ScopeGuard was made with ScopeGuard.__new__; guards "
                                 "come from ResourceScope.add() and friends")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a ScopeGuard cannot be copied or pickled: it is the one handle to "
                        "its registration")

    def __copy__(self) -> ScopeGuard[T]:
        raise TypeError("a ScopeGuard cannot be copied: it is the one handle to its registration")

    def __deepcopy__(self, memo: Any) -> ScopeGuard[T]:
        raise TypeError("a ScopeGuard cannot be copied: it is the one handle to its registration")

    def __init__(self, scope: ResourceScope, key: int, resource: T, cleanup: Cleanup) -> None:
        self._scope_ref: weakref.ref[ResourceScope] = weakref.ref(scope)
        self._key = key
        self._resource: T | None = resource
        self._cleanup: Cleanup | None = cleanup
        self._released = False

    @property
    def resource(self) -> T:
        """The registered resource (UseAfterRelease once released or detached)."""
        if self._released:
            raise UseAfterRelease(f"{self!r} was released; its resource cannot be used")
        return cast(T, self._resource)

    @property
    def released(self) -> bool:
        return self._released

    @property
    def scope(self) -> ResourceScope | None:
        """The owning scope, or None when it was collected."""
        return self._scope_ref()

    def _take(self, verb: str) -> Cleanup:
        """Atomically unregister; returns the cleanup. DoubleRelease if already done."""
        scope = self._scope_ref()
        if scope is not None:
            with scope._lock:
                if scope._entries.pop(self._key, None) is not None:
                    return self._mark_released()
        raise DoubleRelease(f"{self!r} was already released; it cannot be {verb} again")

    def _mark_released(self) -> Cleanup:
        cleanup = self._cleanup
        assert cleanup is not None
        self._released = True
        self._cleanup = None
        return cleanup

    def release(self) -> None:
        """Release the resource now (skipped if it was already released behind our back)."""
        cleanup = self._take("released")
        resource, self._resource = self._resource, None
        if not _already_released(resource):
            result = cleanup()
            if inspect.isawaitable(result):
                _close_awaitable(result)
                raise TypeError(
                    f"cleanup of {resource!r} is asynchronous; use 'await guard.arelease()'"
                )

    async def arelease(self) -> None:
        """Release the resource now, awaiting an asynchronous cleanup."""
        cleanup = self._take("released")
        resource, self._resource = self._resource, None
        if not _already_released(resource):
            result = cleanup()
            if inspect.isawaitable(result):
                await result

    def detach(self) -> T:
        """Remove the resource from the scope without releasing it, and return it."""
        self._take("detached")
        resource, self._resource = self._resource, None
        return cast(T, resource)

    def __repr__(self) -> str:
        try:
            object.__getattribute__(self, "_scope_ref")
        except AttributeError:
            return "<ScopeGuard (not initialised)>"
        state = "released" if self._released else repr(self._resource)
        scope = self._scope_ref()
        where = repr(scope.name) if scope is not None else "a collected scope"
        return f"<ScopeGuard {state} in {where}>"


def _close_awaitable(result: Awaitable[Any]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()  # avoid "coroutine was never awaited"


class ResourceScope:
    """A hierarchical owner of resources; see the module docstring.

    Usable as ``with scope:`` and ``async with scope:`` (the async form awaits
    asynchronous cleanups such as ``aclose()``). A scope cannot be copied or pickled
    (TypeError): it owns its resources.
    """

    _STATE = ("name", "_lock", "_entries", "_children", "_parent_ref", "_key_in_parent",
              "_next_key", "_closed", "_dead_blocks_hint")

    def __getattr__(self, name: str) -> Any:
        # Only reached when an attribute was never set: ResourceScope.__new__ alone.
        if name in ResourceScope._STATE:
            raise NotInitialized("this ResourceScope was made with ResourceScope.__new__ and "
                                 "its __init__ never ran")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a ResourceScope cannot be copied or pickled: it owns its resources")

    def __copy__(self) -> ResourceScope:
        raise TypeError("a ResourceScope cannot be copied: it owns its resources")

    def __deepcopy__(self, memo: Any) -> ResourceScope:
        raise TypeError("a ResourceScope cannot be copied: it owns its resources")

    def __init__(self, name: str | None = None) -> None:
        if "_closed" in self.__dict__:
            raise TypeError(f"resource scope {self.__dict__.get('name')!r} is already initialised; "
                            f"open a new ResourceScope instead of calling __init__ again")
        self.name = name if name is not None else f"scope@{id(self):x}"
        self._lock = threading.RLock()
        self._entries: dict[int, ScopeGuard[Any]] = {}  # insertion order == acquisition order
        self._children: dict[int, ResourceScope] = {}
        self._parent_ref: weakref.ref[ResourceScope] | None = None
        self._key_in_parent: int | None = None
        self._next_key = 0
        self._closed = False
        self._dead_blocks_hint = 0

    # -- registration ----------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ScopeClosed(f"resource scope {self.name!r} is closed")

    def _new_key(self) -> int:
        self._check_open()
        key = self._next_key
        self._next_key = key + 1
        return key

    def add(self, resource: T, cleanup: Cleanup | None = None) -> ScopeGuard[T]:
        """Own `resource`; released at close with `cleanup` or its close()/release()/aclose()."""
        if cleanup is None:
            cleanup = _cleanup_for(resource)
        elif not callable(cleanup):
            raise TypeError(f"cleanup must be callable, not {type(cleanup).__name__}")
        with self._lock:
            key = self._new_key()
            guard = ScopeGuard(self, key, resource, cleanup)
            self._entries[key] = guard
        return guard

    def callback(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ScopeGuard[Any]:
        """Run ``fn(*args, **kwargs)`` when the scope closes (in reverse order like resources)."""
        if not callable(fn):
            raise TypeError(f"callback must be callable, not {type(fn).__name__}")
        return self.add(fn, lambda: fn(*args, **kwargs))

    def enter(self, cm: AbstractContextManager[T]) -> T:
        """Enter a context manager now and exit it when the scope closes; returns its value."""
        self._check_open()
        exit_ = type(cm).__exit__
        value = type(cm).__enter__(cm)
        self.add(cm, lambda: exit_(cm, None, None, None))
        return value

    async def aenter(self, cm: AbstractAsyncContextManager[T]) -> T:
        """Enter an async context manager now; it is exited by ``aclose()``/``async with``."""
        self._check_open()
        aexit = type(cm).__aexit__
        value = await type(cm).__aenter__(cm)
        self.add(cm, lambda: aexit(cm, None, None, None))
        return value

    def allocate(self, allocator: Any, size: int | None = None, **kwargs: Any) -> Block:
        """Allocate a block from `allocator` (Pool: no size) owned by this scope.

        Releasing the block early with ``block.release()`` is fine: the scope skips
        it at close and forgets it at its next sweep.
        """
        self._check_open()
        block = allocator.allocate(**kwargs) if size is None else allocator.allocate(size, **kwargs)
        try:
            self.add(block, block.release)
        except BaseException:
            block.release()
            raise
        self._sweep_if_needed()
        return block  # type: ignore[no-any-return]

    def _sweep_if_needed(self) -> None:
        """Forget blocks released behind our back; amortised O(1) per allocation."""
        if len(self._entries) < 2 * self._dead_blocks_hint + 64:
            return
        with self._lock:
            dead = [
                key
                for key, guard in self._entries.items()
                if isinstance(guard._resource, Block) and not guard._resource.live
            ]
            for key in dead:
                self._entries.pop(key)._mark_released()
            self._dead_blocks_hint = len(self._entries)

    # -- hierarchy -------------------------------------------------------------
    def child(self, name: str | None = None) -> ResourceScope:
        """A new scope owned by this one (closed before this scope's own resources)."""
        with self._lock:
            key = self._new_key()
            kid = ResourceScope(name if name is not None else f"{self.name}/{key}")
            kid._parent_ref = weakref.ref(self)
            kid._key_in_parent = key
            self._children[key] = kid
        return kid

    @property
    def parent(self) -> ResourceScope | None:
        return self._parent_ref() if self._parent_ref is not None else None

    @property
    def children(self) -> tuple[ResourceScope, ...]:
        """Open child scopes, oldest first."""
        with self._lock:
            return tuple(self._children.values())

    # -- counts ----------------------------------------------------------------
    @property
    def own_count(self) -> int:
        """Resources held by this scope itself (not counting children)."""
        with self._lock:
            return sum(1 for g in self._entries.values() if not _already_released(g._resource))

    @property
    def total_count(self) -> int:
        """Resources held by this scope and all its open descendants."""
        return self.own_count + sum(kid.total_count for kid in self.children)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- closing ---------------------------------------------------------------
    def _begin_close(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        parent = self.parent
        if parent is not None:
            with parent._lock:
                parent._children.pop(self._key_in_parent, None)  # type: ignore[arg-type]
        return True

    def _next_child(self) -> ResourceScope | None:
        with self._lock:
            return self._children.popitem()[1] if self._children else None

    def _next_entry(self) -> tuple[object, Cleanup] | None:
        with self._lock:
            if not self._entries:
                return None
            guard = self._entries.popitem()[1]  # most recent first
            resource = guard._resource
            return resource, guard._mark_released()

    def close(self) -> None:
        """Close children (newest first), then release own resources (newest first).

        Every cleanup is attempted; failures are raised together as an
        ExceptionGroup. Closing a closed scope does nothing.
        """
        if not self._begin_close():
            return
        errors: list[BaseException] = []
        while (kid := self._next_child()) is not None:
            try:
                kid.close()
            except BaseException as exc:
                errors.append(exc)
        while (item := self._next_entry()) is not None:
            resource, cleanup = item
            if _already_released(resource):
                continue
            try:
                result = cleanup()
                if inspect.isawaitable(result):
                    _close_awaitable(result)
                    raise TypeError(
                        f"cleanup of {resource!r} is asynchronous; "
                        f"close the scope with 'await scope.aclose()' or 'async with'"
                    )
            except BaseException as exc:
                errors.append(exc)
        self._raise_collected(errors)

    async def aclose(self) -> None:
        """Like close(), awaiting asynchronous cleanups (``aclose()``, coroutine callbacks)."""
        if not self._begin_close():
            return
        errors: list[BaseException] = []
        while (kid := self._next_child()) is not None:
            try:
                await kid.aclose()
            except BaseException as exc:
                errors.append(exc)
        while (item := self._next_entry()) is not None:
            resource, cleanup = item
            if _already_released(resource):
                continue
            try:
                result = cleanup()
                if inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                errors.append(exc)
        self._raise_collected(errors)

    def _raise_collected(self, errors: list[BaseException]) -> None:
        if not errors:
            return
        # KeyboardInterrupt, SystemExit, CancelledError: re-raise the first one as
        # itself (callers and asyncio rely on its type), carrying the rest as context.
        fatal = [e for e in errors if not isinstance(e, Exception)]
        ordinary = [e for e in errors if isinstance(e, Exception)]
        group = (
            ExceptionGroup(f"{len(ordinary)} error(s) while closing scope {self.name!r}", ordinary)
            if ordinary
            else None
        )
        if fatal:
            if group is not None and fatal[0].__context__ is None:
                fatal[0].__context__ = group
            raise fatal[0]
        assert group is not None
        raise group

    def __enter__(self) -> ResourceScope:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    async def __aenter__(self) -> ResourceScope:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Safety net: a scope dropped while open releases what it owns.
        if self.__dict__.get("_closed", True) or sys.is_finalizing():
            return
        try:
            warnings.warn(
                f"resource scope {self.name!r} was dropped without close(); closing it now",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
        finally:
            self.close()

    def __repr__(self) -> str:
        if "_closed" not in self.__dict__:
            return "<ResourceScope (not initialised)>"
        state = "closed" if self._closed else f"own={self.own_count} total={self.total_count}"
        return f"<ResourceScope {self.name!r} {state}>"
