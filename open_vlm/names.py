"""Looking names up in the registries (models, losses, tasks, extractors...) with a 'did you mean' hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """`table[name]`, or a ValueError naming `what`, the closest name and all known ones."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} '{name}'{did_you_mean(name, table)} (known: {sorted(table)})") from None
