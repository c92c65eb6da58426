"""One item whose work raised, as a batch's report and its journal record it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memscope.typing import ItemKey

__all__ = ["ItemFailure"]


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """One item whose work raised, as a batch's report and its journal record it."""

    key: ItemKey | None
    """The item's key (``None`` without a journal or ``key=``: then the item's position)."""
    error_type: str
    """The exception's class name, such as ``"ValueError"``."""
    message: str
    """``str()`` of the exception (or a placeholder when that fails)."""
    notes: tuple[str, ...] = ()
    """The exception's notes (memscope adds the device's figures to out-of-memory errors)."""

    @classmethod
    def of(cls, key: ItemKey | None, error: BaseException) -> ItemFailure:
        """The record of ``error`` raised by the item ``key``."""
        message = _text(error, f"<unprintable {type(error).__name__}>")
        return cls(key, type(error).__name__, message, _notes(error))

    def to_dict(self) -> dict[str, Any]:
        """The failure as a JSON-serialisable dict."""
        return {
            "key": self.key,
            "error_type": self.error_type,
            "message": self.message,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemFailure:
        """The inverse of :meth:`to_dict`."""
        return cls(
            data.get("key"),
            str(data["error_type"]),
            str(data["message"]),
            tuple(str(note) for note in data.get("notes", ())),
        )


def _text(value: object, placeholder: str) -> str:
    """``str(value)``, or ``placeholder`` when that raises or gives no str."""
    try:
        text = str(value)
    except Exception:
        return placeholder
    return text if type(text) is str else placeholder


def _notes(error: BaseException) -> tuple[str, ...]:
    """The error's notes as strings, however odd: Python lets ``__notes__`` be anything."""
    try:
        notes = getattr(error, "__notes__", ())
    except Exception:
        return ("<the error's __notes__ could not be read>",)
    if isinstance(notes, str):
        return (notes,)
    if not isinstance(notes, (list, tuple)):
        return (_text(notes, f"<__notes__ of type {type(notes).__name__}>"),)
    return tuple(
        note if type(note) is str else _text(note, f"<a note of type {type(note).__name__}>")
        for note in notes
    )
