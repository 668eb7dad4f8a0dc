"""Strict JSON parsing for documents from outside: request bodies, workflow files, PNG chunks.

Python's json module accepts what would break us later: NaN and Infinity (and 1e999, which
becomes infinity), integers of any length (a 5,000-digit one cannot even be turned back into
text), strings with lone surrogates (SQLite and UTF-8 cannot store them) and nesting deep
enough to overflow any recursive code downstream. `loads` refuses all of them with a
StrictJSONError that says what was wrong and where (`$.prompt["3"].inputs.seed`), never a
RecursionError or a traceback.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

# Deep enough for any real workflow (UI workflows nest a handful of levels), shallow enough
# that recursive code downstream (validation, json.dumps, SQLite storage) never overflows.
MAX_DEPTH = 128
# Seeds go up to 2**64 - 1 (ComfyUI's maximum); nothing a node takes needs more.
MAX_INT = 2 ** 64
_MAX_INT_CHARS = len(str(MAX_INT)) + 1  # digits and a sign: longer is surely too big
_SURROGATE = re.compile("[\ud800-\udfff]")
# Where a lone surrogate could come from: an escape in the text, or a decoded one.
_MAY_HOLD_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class StrictJSONError(ValueError):
    """A document refused by `loads`; str() gives the problem and where it is."""

    def __init__(self, problem: str, path: str = "$"):
        super().__init__(f"{problem} at {path}" if path else problem)
        self.problem = problem
        self.path = path


class _Refused:
    """Stands in for a number json.loads must not return; found, with its path, afterwards."""

    __slots__ = ("problem",)

    def __init__(self, problem: str):
        self.problem = problem


def _int(text: str) -> int | _Refused:
    if len(text) > _MAX_INT_CHARS:
        return _Refused(f"an integer of {len(text.lstrip('-'))} digits is too large (at most 2**64)")
    value = int(text)
    if abs(value) > MAX_INT:
        return _Refused(f"the integer {text} is too large (at most 2**64)")
    return value


def _float(text: str) -> float | _Refused:
    value = float(text)
    if not math.isfinite(value):
        return _Refused(f"the number {text[:40]} is out of range (it would be infinite)")
    return value


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number")


def has_surrogates(text: str) -> bool:
    """True when text holds a lone surrogate (not encodable as UTF-8)."""
    return _SURROGATE.search(text) is not None


def loads(text: str | bytes) -> Any:
    """Parse a JSON document strictly; raises StrictJSONError (a ValueError)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise StrictJSONError(f"not UTF-8 text (byte {exc.start})", "") from None
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels", "") from None
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", "") from None
    _check(value, _MAY_HOLD_SURROGATE.search(text) is not None)
    return value


def _check(value: Any, strings: bool) -> None:
    """Depth, refused numbers and (when the text may hold them) lone surrogates, iteratively."""
    stack: list[tuple[Any, int, tuple]] = [(value, 0, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels", format_path(path))
            for key, child in item.items():
                if strings and has_surrogates(key):
                    raise StrictJSONError("a key holds a lone surrogate (not valid Unicode text)",
                                          format_path(path + (key,)))
                stack.append((child, depth + 1, path + (key,)))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels", format_path(path))
            stack.extend((child, depth + 1, path + (i,)) for i, child in enumerate(item))
        elif isinstance(item, _Refused):
            raise StrictJSONError(item.problem, format_path(path))
        elif strings and isinstance(item, str) and has_surrogates(item):
            raise StrictJSONError("a string holds a lone surrogate (not valid Unicode text)", format_path(path))


def format_path(path: tuple) -> str:
    """('prompt', '3', 'inputs', 0) -> $.prompt["3"].inputs[0]"""
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += "." + part
        else:
            out += "[" + json.dumps(part[:60]) + "]"
    return out
