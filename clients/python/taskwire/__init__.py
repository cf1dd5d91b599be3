"""taskwire: the Python client and worker runtime for taskwire.

- ``taskwire.v1``: generated messages and gRPC stubs of the public contract
  (proto/taskwire/v1), e.g. ``from taskwire.v1 import task_pb2, service_pb2_grpc``.
- ``taskwire.internal.v1``: generated NATS message bodies (for workers).
- ``taskwire.client``: :class:`Client` and :class:`AsyncClient`, a thin typed client
  (:class:`TaskwireError` for failed calls, :class:`TaskwireWarning` for warned submits;
  :class:`TaskSpec` and :class:`SubmitResult` for batch submits).
- ``taskwire.worker``: :class:`Worker`, a runtime that speaks docs/protocol.md.

The client is imported lazily so that ``import taskwire.worker`` needs no grpcio and
``import taskwire.client`` needs no nats-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncTaskWatch",
    "Client",
    "SubmitResult",
    "TaskSpec",
    "TaskWatch",
    "TaskwireError",
    "TaskwireWarning",
    "TERMINAL_STATES",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from .client import (
        TERMINAL_STATES,
        AsyncClient,
        AsyncTaskWatch,
        Client,
        SubmitResult,
        TaskSpec,
        TaskWatch,
        TaskwireError,
        TaskwireWarning,
    )


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'taskwire' has no attribute {name!r}")
