"""Conversions between plain Python JSON values and ``google.protobuf.Value``.

taskwire carries task inputs and outputs as ``google.protobuf.Value`` (any JSON).
Numbers travel as doubles; like the Rust side (src/json.rs), a double with an
integral value within ±2^53 is read back as a Python ``int``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from google.protobuf import struct_pb2

#: A JSON value as Python holds it.
JSON = Union[None, bool, int, float, str, list["JSON"], dict[str, "JSON"]]

_MAX_SAFE_INT = 2**53


def to_value(obj: Any) -> struct_pb2.Value:
    """Converts a JSON-compatible Python value into a ``google.protobuf.Value``.

    Accepts None, bool, int, float (finite), str, mappings with str keys and
    sequences (not bytes). Raises TypeError or ValueError for anything else.
    """
    v = struct_pb2.Value()
    _fill(v, obj, depth=0)
    return v


def _fill(v: struct_pb2.Value, obj: Any, depth: int) -> None:
    if depth > 100:
        raise ValueError("JSON value nested too deeply")
    if obj is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        v.bool_value = obj
    elif isinstance(obj, (int, float)):
        f = float(obj)
        if not math.isfinite(f):
            raise ValueError(f"{obj!r} is not a JSON number")
        v.number_value = f
    elif isinstance(obj, str):
        v.string_value = obj
    elif isinstance(obj, Mapping):
        s = v.struct_value
        s.Clear()  # marks the oneof even for {}
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
            _fill(s.fields[key], item, depth + 1)
    elif isinstance(obj, Sequence) and not isinstance(obj, (bytes, bytearray)):
        lst = v.list_value
        lst.Clear()
        for item in obj:
            _fill(lst.values.add(), item, depth + 1)
    else:
        raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def from_value(v: Optional[struct_pb2.Value]) -> JSON:
    """Converts a ``google.protobuf.Value`` into plain Python; None/unset reads as None."""
    if v is None:
        return None
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "bool_value":
        return v.bool_value
    if kind == "number_value":
        n = v.number_value
        if n.is_integer() and abs(n) <= _MAX_SAFE_INT:
            return int(n)
        return n
    if kind == "string_value":
        return v.string_value
    if kind == "struct_value":
        return {k: from_value(item) for k, item in v.struct_value.fields.items()}
    if kind == "list_value":
        return [from_value(item) for item in v.list_value.values]
    raise ValueError(f"unknown google.protobuf.Value kind {kind}")  # pragma: no cover
