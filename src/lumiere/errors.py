"""What the library raises for a value it cannot take (``InvalidArgument``, naming the argument)
and for an output it cannot write (``OutputError``, naming the path).

The rules live in the library (``LumierePipeline.check_inputs``, ``prepare_conditioning``,
``check_window``, ...); front ends do not restate them. They turn the Python argument an error
names into their own input: the ``lumiere`` command maps ``window`` to ``--window`` and prints
``argument --window: must be a positive multiple of 4 for this model, got 6`` (exit code 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_NOT_SHOWN = object()  # the value of an argument that is wrong only in combination with another


class _Names(dict):
    """``str.format_map`` table of argument names: a name not in it is spelled as it is."""

    def __missing__(self, key: str) -> str:
        return key


class InvalidArgument(ValueError):
    """A value of a named argument that the library refuses (a ``ValueError``, as in diffusers).

    ``argument``: the Python name of the argument (``"window"``, ``"num_frames"``).
    ``requirement``: what it accepts, e.g. "must be a positive multiple of 4 for this model";
        other arguments appear as ``{window}`` placeholders, so each front end spells them its way.
    ``value``: what was given; left out where the combination is wrong, not the value.

    ``str(err)`` names the arguments as Python does: ``window=6: must be a positive multiple of 4
    for this model``, or ``strength: applies to video-to-video only: video without mask``.
    """

    def __init__(self, argument: str, requirement: str, value: Any = _NOT_SHOWN):
        self.argument = argument
        self.requirement = requirement
        self.value = value
        shown = f"={value!r}" if self.has_value else ""
        super().__init__(f"{argument}{shown}: {self.requirement_for({})}")

    @property
    def has_value(self) -> bool:
        """Whether the error is about the value given (not only about what it was given with)."""
        return self.value is not _NOT_SHOWN

    def requirement_for(self, names: Mapping[str, str]) -> str:
        """The requirement with the other arguments spelled by ``names`` (Python name -> the front
        end's name, e.g. ``{"window": "--window"}``); names not in it stay Python names."""
        return self.requirement.format_map(_Names(names))


class OutputError(OSError):
    """An output that cannot be written, in one line naming the path and the cause.

    An ``OSError`` whose ``errno`` is the file system's (``ENOSPC`` for a full disk, ``EROFS``
    for a read-only file system, ``EISDIR``, ``ENOTDIR``, ``EACCES``, ...), so a front end can
    tell a fault of the machine from a path to change (``lumiere.files.is_machine_fault``).
    ``str(err)`` is the message alone, without Python's ``[Errno 28]`` prefix.
    """

    def __init__(self, code: int, message: str):
        super().__init__(code, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):  # pickles (multiprocessing, pytest-xdist) with its own arguments
        return type(self), (self.errno, self.strerror)
