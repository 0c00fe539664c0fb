"""Error types of the engine, and `plural`, the wording its messages share at every layer.

Every message names the problem and what to do about it, because the CLI and the Slicer module show it to
the user as is. The CLI maps the classes to exit codes (InputError 2, ModelError 3, other 4, Cancelled 130).
"""

from __future__ import annotations


class VeloxSegError(Exception):
    """Base class of all errors raised on purpose by the engine."""


class InputError(VeloxSegError):
    """An input image or path is missing, unreadable or not usable (wrong content, geometry, units)."""


class ModelError(VeloxSegError):
    """The model, its manifest or the runtime that executes it cannot be used."""


class Cancelled(VeloxSegError):  # noqa: N818  (name fixed by docs/architecture.md)
    """The caller asked to stop; nothing was produced."""


def plural(count: int, word: str, words: str = "") -> str:
    """'1 lesion', '2 lesions', '0 lesions'; `words` for an irregular plural ('study', 'studies')."""
    return f"{count} {word}" if count == 1 else f"{count} {words or word + 's'}"
