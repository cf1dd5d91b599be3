"""What the client and the worker share about task graphs (children and fan-in): the
failure and cancel policies by value or by a friendly name, checked before anything
is sent. Needs protobuf only (no grpcio, no nats-py)."""

from __future__ import annotations

from typing import Union

from .v1 import task_pb2

#: A ``ChildFailurePolicy`` or ``CancelPolicy``: its value (``task_pb2.CHILD_FAILURE_POLICY_IGNORE``),
#: its name (``"CHILD_FAILURE_POLICY_IGNORE"``), a short name (``"ignore"``), or None
#: (unspecified: the default).
PolicyLike = Union[int, str, None]

# Short names as the CLI spells them (--on-failure fail-parent), with underscores too.
_CHILD_FAILURE_NAMES = {
    "fail_parent": task_pb2.CHILD_FAILURE_POLICY_FAIL_PARENT,
    "ignore": task_pb2.CHILD_FAILURE_POLICY_IGNORE,
    "continue": task_pb2.CHILD_FAILURE_POLICY_CONTINUE,
}
_CANCEL_NAMES = {
    "cascade": task_pb2.CANCEL_POLICY_CASCADE,
    "abandon": task_pb2.CANCEL_POLICY_ABANDON,
}


def _policy(value: PolicyLike, what: str, enum: object, prefix: str, names: dict[str, int]) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        type_name = enum.DESCRIPTOR.name  # type: ignore[attr-defined]
        raise TypeError(f"{what} must be a {type_name} value or name, not {type(value).__name__}")
    if isinstance(value, int):
        if value not in enum.values():  # type: ignore[attr-defined]
            raise ValueError(f"{what}: {value} is not a known value ({_choices(names)})")
        return int(value)
    key = value.strip().lower().replace("-", "_")
    full = prefix.lower() + "_"
    if key.startswith(full):
        key = key[len(full) :]
    if key == "unspecified":
        return 0
    if key not in names:
        raise ValueError(f"{what}: {value!r} is not {_choices(names)}")
    return names[key]


def _choices(names: dict[str, int]) -> str:
    keys = [f'"{k}"' for k in names]
    return ", ".join(keys[:-1]) + " or " + keys[-1]


def child_failure_value(policy: PolicyLike, what: str = "child_failure") -> int:
    """A ``ChildFailurePolicy`` value from ``policy``: ``"fail_parent"`` (or
    ``"fail-parent"``), ``"ignore"``, ``"continue"``, a full name, an enum value, or
    None (0: unspecified, which the server reads as FAIL_PARENT). Anything else is a
    ValueError (TypeError for a value that is neither an int nor a str)."""
    return _policy(policy, what, task_pb2.ChildFailurePolicy, "CHILD_FAILURE_POLICY", _CHILD_FAILURE_NAMES)


def cancel_policy_value(policy: PolicyLike, what: str = "cancel_policy") -> int:
    """A ``CancelPolicy`` value from ``policy``: ``"cascade"``, ``"abandon"``, a full
    name, an enum value, or None (0: unspecified, which the server reads as CASCADE).
    Anything else is a ValueError (TypeError for a value that is neither an int nor a
    str)."""
    return _policy(policy, what, task_pb2.CancelPolicy, "CANCEL_POLICY", _CANCEL_NAMES)
