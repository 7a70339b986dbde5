"""Helpers that write numbers into messages."""

from __future__ import annotations


def plural(number: int, noun: str) -> str:
    """Return `1 trial` or `3 trials`: the number with its noun, plural unless 1.

    Nouns whose plural is not the noun plus `s` must not be passed.
    """
    return f"{number} {noun}" + ("" if number == 1 else "s")
