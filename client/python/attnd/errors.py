"""Errors: every failure of a libattnd call is an ``attnd.Error``.

libattnd returns an ``attnd_status`` (0, or a negated gRPC status code) and
fills an ``attnd_error`` with the code and the server's message, which names
the offending field ("q: shape [2, 16, 576] ... expected ..."). Here that
becomes an exception carrying ``code`` (a ``StatusCode``, the gRPC code as a
positive number, as grpcio numbers them) and ``message``, of the subclass
for that code, so a caller can write ``except attnd.NotFoundError``.

Misuse that never reaches libattnd is a plain Python exception instead:
``TypeError`` for a dtype the wire has no form for, ``ValueError`` for a
closed client or stream.
"""

from __future__ import annotations

import enum
from typing import Dict, Optional, Type


class StatusCode(enum.IntEnum):
    """gRPC status codes (``attnd_status`` is their negation)."""
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Error(Exception):
    """A failed attnd call: ``code`` (StatusCode) and the server's ``message``.

    ``applied`` is set by ``Client.append_kv``: 0, since AppendKV is all or
    nothing (libattnd's applied count, kept for the C API's sake; None
    elsewhere).
    """

    code: StatusCode = StatusCode.UNKNOWN

    def __init__(self, code: StatusCode, message: str, applied: Optional[int] = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.applied = applied


class CancelledError(Error):
    """CANCELLED."""


class UnknownError(Error):
    """UNKNOWN."""


class InvalidArgumentError(Error):
    """INVALID_ARGUMENT: a malformed request; the message names the field."""


class DeadlineExceededError(Error):
    """DEADLINE_EXCEEDED: the call took longer than the client's deadline."""


class NotFoundError(Error):
    """NOT_FOUND: e.g. an unknown (or closed) session."""


class AlreadyExistsError(Error):
    """ALREADY_EXISTS."""


class PermissionDeniedError(Error):
    """PERMISSION_DENIED."""


class ResourceExhaustedError(Error):
    """RESOURCE_EXHAUSTED: the KV pool or the session table is full."""


class FailedPreconditionError(Error):
    """FAILED_PRECONDITION: e.g. an append at the wrong position."""


class AbortedError(Error):
    """ABORTED."""


class OutOfRangeError(Error):
    """OUT_OF_RANGE: e.g. a layer past the model's."""


class UnimplementedError(Error):
    """UNIMPLEMENTED."""


class InternalError(Error):
    """INTERNAL."""


class UnavailableError(Error):
    """UNAVAILABLE: the server (or a rank of its group) cannot be reached."""


class DataLossError(Error):
    """DATA_LOSS: a group session whose shards no longer agree."""


class UnauthenticatedError(Error):
    """UNAUTHENTICATED."""


_BY_CODE: Dict[StatusCode, Type[Error]] = {
    StatusCode.CANCELLED: CancelledError,
    StatusCode.UNKNOWN: UnknownError,
    StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    StatusCode.NOT_FOUND: NotFoundError,
    StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    StatusCode.ABORTED: AbortedError,
    StatusCode.OUT_OF_RANGE: OutOfRangeError,
    StatusCode.UNIMPLEMENTED: UnimplementedError,
    StatusCode.INTERNAL: InternalError,
    StatusCode.UNAVAILABLE: UnavailableError,
    StatusCode.DATA_LOSS: DataLossError,
    StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def make_error(status: int, message: str, applied: Optional[int] = None) -> Error:
    """The exception for an attnd_status (negative) and its message."""
    try:
        code = StatusCode(-status)
    except ValueError:
        code = StatusCode.UNKNOWN
        message = f"(attnd_status {status}) {message}"
    return _BY_CODE.get(code, Error)(code, message, applied)
