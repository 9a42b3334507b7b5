"""Particle fountain: thousands of numpy-vectorised particles on a frame allocator.

Every per-frame temporary (accelerations, distances, masks, pixel coordinates...)
comes from a double-buffered :class:`framealloc.FrameAllocator`, and so does the
simulation state itself: frame k writes the new positions into its own buffer while
reading frame k-1's, and render() interpolates between the two -- the reason for
double buffering. ``--naive`` runs the same maths the usual numpy way (a heap
temporary per expression); ``--compare`` runs framealloc, naive and "numpy-out"
(the framealloc code with ``numpy.empty`` as its array source, which separates
the allocator's share from the share of writing into preallocated outputs),
taking turns in 4 slices so that machine noise hits every mode alike.

``--gc frame`` runs the loops with framealloc's frame-paced garbage collector
(``GameLoop(gc="frame")``, frozen after loading) instead of CPython's default; the
report gives the collector's pauses inside frames and in the slack between them.

    python examples/game_demo.py              # framealloc, headless
    python examples/game_demo.py --compare    # framealloc vs numpy, same run
    python examples/game_demo.py --naive      # plain numpy only
    python examples/game_demo.py --gc frame   # frame-paced GC
    python examples/game_demo.py --window     # pygame-ce window (the 'window' extra)
    python examples/game_demo.py --window --screenshot shot.png --frames 120
    python examples/game_demo.py --compare --plot frames.png   # matplotlib ('plot' extra)
    python examples/game_demo.py --frames 60  # short run
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from framealloc import FixedStepClock, Frame, FrameAllocator, GameLoop, LoopStats

WIDTH, HEIGHT = 800.0, 600.0
LIMITS = np.array([WIDTH, HEIGHT])
GRAVITY = 120.0  # px/s^2, downwards (y grows downwards, as on screen)
DRAG = 0.15  # 1/s
SOFTEN = 400.0  # px^2, keeps the attraction finite near an attractor
STRENGTH = 4.0e6  # attractor pull
LIFETIME = 6.0  # seconds, spread uniformly so respawns are continuous
EMITTER = np.array([WIDTH / 2, HEIGHT * 0.9])
DT = 1 / 60
MODES = ("framealloc", "naive", "numpy-out")
ROUNDS = 4  # --compare: the modes take turns in this many slices of the run


def empties(count: int, shape: Any, dtype: Any = None) -> tuple[np.ndarray, ...]:
    """numpy's counterpart of FrameAllocator.arrays() (numpy-out mode)."""
    return tuple(np.empty(shape, dtype) for _ in range(count))


def attractors(t: float) -> list[tuple[float, float, float]]:
    """Four attractors circling the centre: (x, y, strength)."""
    out = []
    for k in range(4):
        angle = 0.6 * t + k * np.pi / 2
        out.append((WIDTH / 2 + 220 * np.cos(angle), HEIGHT / 2 + 160 * np.sin(angle),
                    STRENGTH * (1.0 if k % 2 == 0 else 0.5)))
    return out


def initial_state(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2)) * LIMITS
    vel = (rng.random((n, 2)) - 0.5) * 200.0
    life = rng.random(n) * LIFETIME
    return pos, vel, life, rng


class NaiveSim:
    """The update written the usual numpy way: every expression makes a heap temporary."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.pos, self.vel, self.life, self.rng = initial_state(n, seed)
        self.prev_pos = self.pos
        self.pixels: np.ndarray | None = None

    def update(self, dt: float, frame: Any) -> None:
        pos, vel = self.pos, self.vel
        acc = np.zeros_like(pos)
        acc[:, 1] = GRAVITY
        for ax, ay, strength in attractors(frame.time):
            d = np.array([ax, ay]) - pos
            r2 = (d * d).sum(axis=1) + SOFTEN
            acc += d * (strength / (r2 * np.sqrt(r2)))[:, None]
        vel = (vel + acc * dt) * (1.0 - DRAG * dt)
        pos = pos + vel * dt
        low = pos < 0.0
        pos = np.where(low, -pos, pos)
        vel = np.where(low, -vel, vel)
        high = pos > LIMITS
        pos = np.where(high, 2.0 * LIMITS - pos, pos)
        vel = np.where(high, -vel, vel)
        life = self.life - dt
        dead = life <= 0.0
        k = int(np.count_nonzero(dead))
        if k:
            pos[dead] = EMITTER + (self.rng.random((k, 2)) - 0.5) * 20.0
            vel[dead] = (self.rng.random((k, 2)) - 0.5) * np.array([300.0, 200.0]) - [0.0, 350.0]
            life[dead] = LIFETIME
        self.prev_pos, self.pos, self.vel, self.life = self.pos, pos, vel, life

    def render(self, alpha: float, frame: Any) -> None:
        shown = self.prev_pos + (self.pos - self.prev_pos) * alpha
        self.pixels = np.clip(shown, 0, LIMITS - 1).astype(np.int32)
        self.prev_pos = self.pos


class FrameSim:
    """The same update with every temporary -- and the state -- in frame memory.

    With ``heap=True`` the arrays come from ``numpy.empty`` instead (mode "numpy-out"):
    same ufunc calls, only the memory source differs.
    """

    def __init__(self, n: int, allocator: FrameAllocator, seed: int = 0,
                 heap: bool = False) -> None:
        pos, vel, life, self.rng = initial_state(n, seed)
        self.heap = heap
        if heap:
            self.pos, self.vel, self.life = pos, vel, life
        else:
            self.pos, self.vel = allocator.copy(pos), allocator.copy(vel)
            self.life = allocator.copy(life)
        self.prev_pos = self.pos
        self.state_frame = allocator.frame  # the frame the state arrays live in
        self.limits = allocator.persistent.copy(LIMITS)
        self.pixels: np.ndarray | None = None

    def update(self, dt: float, frame: Frame) -> None:
        a = np.empty if self.heap else frame.array
        many = empties if self.heap else frame.arrays
        pos, vel = self.pos, self.vel
        n = len(pos)
        acc, d, tmp, new_vel, new_pos = many(5, (n, 2))
        acc[:, 0] = 0.0
        acc[:, 1] = GRAVITY
        r2, inv, new_life = many(3, n)
        target = a(2)
        for ax, ay, strength in attractors(frame.time):
            target[0], target[1] = ax, ay
            np.subtract(target, pos, out=d)
            np.multiply(d, d, out=tmp)
            np.add(tmp[:, 0], tmp[:, 1], out=r2)
            r2 += SOFTEN
            np.sqrt(r2, out=inv)
            inv *= r2
            np.divide(strength, inv, out=inv)
            np.multiply(d, inv[:, None], out=tmp)
            acc += tmp
        np.multiply(acc, dt, out=new_vel)
        new_vel += vel
        new_vel *= 1.0 - DRAG * dt
        np.multiply(new_vel, dt, out=new_pos)
        new_pos += pos
        mask = a((n, 2), np.bool_)
        np.less(new_pos, 0.0, out=mask)
        np.negative(new_pos, out=new_pos, where=mask)
        np.negative(new_vel, out=new_vel, where=mask)
        np.greater(new_pos, self.limits, out=mask)
        np.subtract(2.0 * self.limits, new_pos, out=new_pos, where=mask)
        np.negative(new_vel, out=new_vel, where=mask)
        np.subtract(self.life, dt, out=new_life)
        dead = a(n, np.bool_)
        np.less_equal(new_life, 0.0, out=dead)
        k = int(np.count_nonzero(dead))
        if k:
            rnd = a((k, 2))
            self.rng.random(out=rnd)
            rnd -= 0.5
            rnd *= 20.0
            rnd += EMITTER
            new_pos[dead] = rnd
            self.rng.random(out=rnd)
            rnd -= 0.5
            rnd *= (300.0, 200.0)
            rnd -= (0.0, 350.0)
            new_vel[dead] = rnd
            new_life[dead] = LIFETIME
        self.prev_pos, self.pos, self.vel, self.life = self.pos, new_pos, new_vel, new_life
        self.state_frame = frame.number

    def render(self, alpha: float, frame: Frame) -> None:
        a = np.empty if self.heap else frame.array
        if self.state_frame != frame.number and not self.heap:
            # no update ran this frame (a fast window loop): carry the state into this
            # frame, or the next swap would find last frame's arrays still in use
            self.pos, self.vel = frame.copy(self.pos), frame.copy(self.vel)
            self.life = frame.copy(self.life)
            self.prev_pos = self.pos
            self.state_frame = frame.number
        shown = a(self.pos.shape)
        np.subtract(self.pos, self.prev_pos, out=shown)
        shown *= alpha
        shown += self.prev_pos  # previous frame's positions, still valid: double buffering
        np.clip(shown, 0, LIMITS - 1, out=shown)
        pixels = a(self.pos.shape, np.int32)
        np.copyto(pixels, shown, casting="unsafe")
        self.pixels = pixels
        self.prev_pos = self.pos  # drop frame k-1 before frame k+1 recycles its buffer


def draw(window: Any, pixels: np.ndarray | None) -> None:
    """Plot the particles on the pygame window (window mode only)."""
    import pygame

    surface = window.surface
    surface.fill((8, 8, 16))
    if pixels is not None:
        view = pygame.surfarray.pixels2d(surface)
        view[pixels[:, 0], pixels[:, 1]] = 0xFFD070
        del view


def make_loop(mode: str, particles: int, seed: int = 0, window: Any = None,
              frame_size: int = 8 << 20, gc: str = "auto") -> tuple[GameLoop, FrameAllocator, Any]:
    """The game loop, frame allocator and simulation of one mode (one of MODES)."""
    if window is not None:  # a real clock: up to max_updates (5) updates in one frame
        frame_size = max(frame_size, 5 * 160 * particles + (1 << 20))
    allocator = FrameAllocator(frame_size)
    sim: Any
    if mode == "naive":
        sim = NaiveSim(particles, seed)
    else:
        sim = FrameSim(particles, allocator, seed, heap=mode == "numpy-out")

    def render(alpha: float, frame: Frame) -> None:
        sim.render(alpha, frame)
        if window is not None:
            draw(window, sim.pixels)

    if window is None:
        clock: Any = FixedStepClock(DT)  # headless: exactly one update per frame
        loop = GameLoop(sim.update, render, allocator=allocator, dt=DT, clock=clock,
                        gc=gc)  # type: ignore[arg-type]
    else:
        loop = GameLoop(sim.update, render, allocator=allocator, dt=DT, window=window,
                        target_fps=60, gc=gc)  # type: ignore[arg-type]
    if gc == "frame":
        loop.freeze()  # after loading: the state of the level is never traversed again
    return loop, allocator, sim


def run(mode: str, particles: int, frames: int, seed: int = 0, window: Any = None,
        frame_size: int = 8 << 20, gc: str = "auto") -> tuple[LoopStats, FrameAllocator, Any]:
    """Run the demo in `mode` (one of MODES); return the loop stats, allocator and simulation."""
    loop, allocator, sim = make_loop(mode, particles, seed, window, frame_size, gc)
    return loop.run(frames), allocator, sim


def run_interleaved(modes: list[str], particles: int, frames: int, seed: int = 0,
                    rounds: int = ROUNDS, gc: str = "auto"
                    ) -> dict[str, tuple[LoopStats, FrameAllocator, Any]]:
    """Run every mode for `frames` frames, taking turns in `rounds` slices.

    Machine noise (other processes, frequency changes) then hits every mode alike
    instead of whichever happened to run during it. Each mode keeps its own loop,
    allocator and simulation across its slices; only the first frame of a slice
    starts with caches warmed by another mode (`rounds` such frames per mode, fewer
    than 1 % of 600 frames with the default 4 rounds).
    """
    loops = {mode: make_loop(mode, particles, seed, gc=gc) for mode in modes}
    done = 0
    for r in range(rounds):
        k = (frames * (r + 1)) // rounds - done
        for mode in modes:
            loops[mode][0].run(k)
        done += k
    return {mode: (loop.stats, allocator, sim) for mode, (loop, allocator, sim) in loops.items()}


def summary_table(results: dict[str, tuple[LoopStats, FrameAllocator, Any]]) -> str:
    rows = [("mode", "frames", "p50 ms", "p99 ms", "max ms", "frame B/frame", "frame allocs/frame",
             "high water B", "overflows", "GC collections", "GC ms in frames", "GC ms in slack",
             "GC collected")]
    for mode, (stats, _allocator, _sim) in results.items():
        s = stats.summary()
        used = mode == "framealloc"  # the other modes do not allocate from frames
        rows.append((
            mode, str(s["frames"]), f"{s['frame_ms_p50']:.3f}", f"{s['frame_ms_p99']:.3f}",
            f"{s['frame_ms_max']:.3f}",
            f"{s['bytes_per_frame']:.0f}" if used else "-",
            f"{s['allocations_per_frame']:.1f}" if used else "-",
            str(s["high_water_bytes"]) if used else "-",
            str(s["overflows"]), str(s["gc_collections"]), f"{s['gc_ms_in_frames']:.2f}",
            f"{s['gc_ms_in_slack']:.2f}", str(s["gc_collected"]),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: dict[str, tuple[LoopStats, FrameAllocator, Any]], path: str) -> None:
    """Frame times over the run, one line per mode, GC pauses marked (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for mode, (stats, _allocator, _sim) in results.items():
        times = stats.series("frame_time") * 1e3
        frames = np.arange(len(times))
        (line,) = ax.plot(frames, times, lw=0.8, label=f"{mode} (work ms per frame)")
        in_frame = stats.series("gc_frame") > 0
        in_slack = stats.series("gc_slack") > 0
        ax.scatter(frames[in_frame], times[in_frame], marker="x", s=24, color=line.get_color(),
                   label=f"{mode}: GC pause inside the frame")
        if in_slack.any():
            ax.scatter(frames[in_slack], np.zeros(int(in_slack.sum())), marker="|", s=30,
                       color=line.get_color(), alpha=0.5,
                       label=f"{mode}: GC in the slack after the frame")
    ax.set_xlabel("frame")
    ax.set_ylabel("ms")
    ax.set_title("game_demo.py: frame times, GC pauses marked")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=600, help="frames to run (default 600)")
    parser.add_argument("--particles", type=int, default=20_000, help="particles (default 20000)")
    parser.add_argument("--naive", action="store_true", help="plain numpy temporaries only")
    parser.add_argument("--compare", action="store_true",
                        help="run framealloc, naive and numpy-out in the same process, compare")
    parser.add_argument("--window", action="store_true", help="open a pygame-ce window")
    parser.add_argument("--screenshot", metavar="PATH",
                        help="with --window: save the last frame as a PNG")
    parser.add_argument("--plot", metavar="PATH",
                        help="draw frame times per mode with GC pauses marked (matplotlib)")
    parser.add_argument("--gc", choices=("auto", "frame"), default="auto",
                        help="CPython's collector (auto) or framealloc's frame-paced one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("--plot needs matplotlib: pip install matplotlib (or the 'plot' extra)",
                  file=sys.stderr)
            return 2
    window = None
    if args.window:
        from framealloc.window import PygameWindow, pygame_available

        if not pygame_available():
            print("--window needs pygame-ce: pip install pygame-ce (or the 'window' extra)",
                  file=sys.stderr)
            return 2
        window = PygameWindow((int(WIDTH), int(HEIGHT)), "framealloc particles")
    modes = list(MODES) if args.compare else ["naive" if args.naive else "framealloc"]
    started = time.perf_counter()
    if len(modes) > 1 and window is None:  # a comparison: the modes take turns
        results = run_interleaved(modes, args.particles, args.frames, args.seed, gc=args.gc)
    else:
        results = {mode: run(mode, args.particles, args.frames, args.seed, window, gc=args.gc)
                   for mode in modes}
    elapsed = time.perf_counter() - started
    if window is not None:
        if args.screenshot:
            window.screenshot(args.screenshot)
        window.close()
    if args.plot:
        plot(results, args.plot)

    turns = f", modes interleaved in {ROUNDS} turns" if len(results) > 1 and window is None else ""
    print(f"{args.particles} particles, {args.frames} frames per mode, "
          f"{'window' if window else 'headless'}{turns}, gc={args.gc}, {elapsed:.1f} s")
    print(summary_table(results))
    if len(results) > 1:
        fa = results["framealloc"][0].summary()
        for other in modes[1:]:
            s = results[other][0].summary()
            print(f"{other} / framealloc frame time: "
                  f"p50 {s['frame_ms_p50'] / fa['frame_ms_p50']:.2f}x, "
                  f"p99 {s['frame_ms_p99'] / fa['frame_ms_p99']:.2f}x (above 1: framealloc faster)")
    print()
    for mode, (stats, _allocator, _sim) in results.items():
        g = stats.gc
        print(f"GC {mode}: collections gen0/1/2 {'/'.join(map(str, g.collections))} "
              f"(inside frames {'/'.join(map(str, g.in_frame))}), "
              f"{g.pause_in_frames * 1e3:.2f} ms inside frames, "
              f"{g.pause_in_slack * 1e3:.2f} ms in the slack, "
              f"{g.pause_at_freeze * 1e3:.2f} ms at freeze, {g.collected} objects collected, "
              f"{g.frozen} frozen, {g.forced_full} forced full collections")
    if "framealloc" in results:
        print()
        print(results["framealloc"][1].report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
