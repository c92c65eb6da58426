"""Errors in the command line's terms: the options a user typed, not the parameters behind them."""

from __future__ import annotations

DEVICE_OPTIONS = {"device": "--device"}
"""The device parameter, as every command that takes one names it."""


def as_typed(message: str, options: dict[str, str]) -> str:
    """``message`` with the parameter it starts with named as the option that sets it.

    memscope's checks start their messages with the parameter's name (``images must be an
    int >= 1, got 0``); on the command line the user typed ``--images``.
    """
    name, separator, rest = message.partition(" ")
    if separator and name in options:
        return f"{options[name]} {rest}"
    return message
