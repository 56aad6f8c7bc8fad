"""Bounded JSON parsing for text that comes from users or from the network.

``json.loads`` accepts inputs whose *shape* can hurt the process: thousands of nested brackets
raise ``RecursionError`` (not a ``ValueError``, so handlers miss it), a 5,000-digit integer
takes quadratic time or trips Python's digit limit, ``1e999`` becomes ``inf`` and ``NaN`` is
accepted. :func:`loads` parses with limits on all three and raises one error type,
:class:`~worldstereo_core.errors.MalformedJsonError`, whose message says what was wrong.
Every JSON input of the pack (camera.json, keyframes, the inspector's request bodies) goes
through it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import MalformedJsonError

__all__ = ["loads", "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_NUMBER_CHARS"]

# camera.json nests 3 levels (list of 4×4 matrices; 4 in the per-view layout), request bodies 3;
# 32 leaves room for extra keys a user keeps in a camera.json
DEFAULT_MAX_DEPTH = 32
# a float64 written in full (repr) needs at most 24 characters; 64 leaves room for zero padding
DEFAULT_MAX_NUMBER_CHARS = 64


class _Refused(ValueError):
    pass


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed value (iterative; stops counting past ``limit``)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads(
    text: str | bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_number_chars: int = DEFAULT_MAX_NUMBER_CHARS,
    what: str = "JSON",
) -> Any:
    """Parse ``text`` (str, or UTF-8 bytes) with bounded nesting and numbers.

    Raises:
        MalformedJsonError: invalid UTF-8 or JSON, nesting deeper than ``max_depth``, a number
            longer than ``max_number_chars`` characters, NaN / Infinity, or a float that
            overflows to infinity.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedJsonError(f"{what} is not UTF-8 text ({e.reason} at byte {e.start})") from None

    def number(s: str) -> None:
        if len(s) > max_number_chars:
            raise _Refused(f"{what} holds a number of {len(s)} characters (at most {max_number_chars})")

    def parse_int(s: str) -> int:
        number(s)
        return int(s)

    def parse_float(s: str) -> float:
        number(s)
        v = float(s)
        if not math.isfinite(v):
            raise _Refused(f"{what} holds {s}, which is out of the float64 range")
        return v

    def parse_constant(s: str) -> Any:
        raise _Refused(f"{what} holds {s}; JSON numbers must be finite")

    try:
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except RecursionError:
        raise MalformedJsonError(f"{what} is nested too deeply (at most {max_depth} levels)") from None
    except _Refused as e:
        raise MalformedJsonError(str(e)) from None
    except json.JSONDecodeError as e:
        raise MalformedJsonError(f"{what} is not valid JSON ({e})") from None
    except ValueError as e:  # e.g. Python's own limit on integer digits
        raise MalformedJsonError(f"{what} is not usable JSON ({e})") from None
    if _depth(value, max_depth) > max_depth:
        raise MalformedJsonError(f"{what} is nested too deeply (at most {max_depth} levels)")
    return value
