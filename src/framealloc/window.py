"""A pygame-ce window for GameLoop (optional: the ``window`` extra, ``pip install pygame-ce``).

Headless machines (CI) can run it under SDL's dummy video driver
(``SDL_VIDEODRIVER=dummy``): everything is drawn to the surface, nothing is shown.
"""

from __future__ import annotations

from typing import Any

from coreallocs.uncopyable import Uncopyable

__all__ = ["PygameWindow", "pygame_available"]


def pygame_available() -> bool:
    """True if pygame can be imported."""
    try:
        import pygame  # noqa: F401
    except ImportError:
        return False
    return True


class PygameWindow(Uncopyable):
    """A window the loop polls for events and presents after render().

    ``surface`` is the pygame display surface to draw on. Closing the window or
    pressing Escape makes ``poll()`` return False, which ends ``GameLoop.run()``.
    """

    def __init__(self, size: tuple[int, int] = (800, 600), title: str = "framealloc") -> None:
        try:
            import pygame
        except ImportError as exc:
            raise ImportError(
                "the window mode needs pygame-ce: pip install pygame-ce (or the 'window' extra)"
            ) from exc
        self._pg: Any = pygame
        pygame.init()
        self.surface = pygame.display.set_mode(size)
        pygame.display.set_caption(title)
        self.size = size
        self.open = True

    def poll(self) -> bool:
        pg = self._pg
        for event in pg.event.get():
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key == pg.K_ESCAPE):
                self.open = False
        return self.open

    def present(self) -> None:
        self._pg.display.flip()

    def screenshot(self, path: str) -> None:
        """Save what the surface shows as an image file (PNG by the extension)."""
        self._pg.image.save(self.surface, path)

    def close(self) -> None:
        self.open = False
        self._pg.quit()
