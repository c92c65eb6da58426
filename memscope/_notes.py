"""Notes on exceptions: ``error.add_note(note)``, also on Python 3.10, and never raising.

A note is a courtesy (the device's figures at an OOM, a watcher or journal that failed while
the batch ended); the error is what the user gets, so adding one must not replace it.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["add_note", "notes_of"]

logger = logging.getLogger("memscope")


def notes_of(error: BaseException) -> list[Any] | None:
    """``error``'s notes, or ``None`` where it has none (or something that is not a list)."""
    notes = getattr(error, "__notes__", None)
    return notes if isinstance(notes, list) else None


def add_note(error: BaseException, note: str) -> bool:
    """Add ``note`` to ``error``'s notes (what ``add_note`` does from Python 3.11 on; 3.10's
    traceback does not print them, but code and later tooling see them); whether it could
    (an error whose ``__notes__`` is not a list takes none)."""
    try:
        notes = getattr(error, "__notes__", None)
        if notes is None:
            setattr(error, "__notes__", [note])  # noqa: B010 (no __notes__ in 3.10's typing)
            return True
        if isinstance(notes, list):
            notes.append(note)
            return True
    except Exception:
        logger.debug("could not add a note to %s", type(error).__name__, exc_info=True)
    return False
