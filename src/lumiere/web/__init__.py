"""A web page for generation (``lumiere serve``; needs the ``web`` extra: Gradio).

``lumiere.web.app`` holds the request handlers in plain Python (``Studio``, ``Caps``); it does not
import Gradio. ``build_app``, ``launch`` and ``serve`` (``lumiere.web.ui``) import it on first use.
"""

from __future__ import annotations

from typing import Any

from lumiere.web.app import (
    MODES,
    Caps,
    Gallery,
    GenerationTimeout,
    InputError,
    Result,
    Settings,
    Studio,
    WebError,
)

__all__ = [
    "MODES",
    "Caps",
    "Gallery",
    "GenerationTimeout",
    "InputError",
    "Result",
    "Settings",
    "Studio",
    "WebError",
    "build_app",
    "launch",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name in ("build_app", "launch", "serve"):
        from lumiere.web import ui

        return getattr(ui, name)
    raise AttributeError(f"module 'lumiere.web' has no attribute {name!r}")
