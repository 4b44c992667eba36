"""attnd: Python client of an attnd attention worker, over libattnd (ctypes).

    import attnd, numpy as np
    with attnd.Client("127.0.0.1:7700") as c, c.session(max_tokens=4096) as s:
        m = s.model                                      # what the worker serves
        s.append_kv(layer=0, kv=prefill_kv)              # [T, kv entry]
        out = c.attend(0, [s], q, new_kv=kv)             # [1, Hq, d_k] -> [1, Hq, d_v]

numpy arrays and torch tensors go to libattnd without a copy when they are
C-contiguous (bf16: torch.bfloat16, or numpy uint16 holding bf16 bits; see
attnd.tensors). Failures raise attnd.Error subclasses carrying the gRPC
status code and the server's message. Asynchronous calls: attend_async
returns a Call to wait() or await; Client.stream() runs a decode loop over
one AttendStream. Sparse attention: create_session(policy=attnd.Policy...,
policy_table=[attnd.PolicyRule...]), attend(..., given=, return_pages=),
the same on attend_async and Stream.attend (the attnd.Selection a layer
returns is given= to the next). Where libattnd.so is found: attnd._lib
(ATTND_LIB first).
"""

from ._lib import LibraryNotFoundError, library_path
from .calls import Call, ServerTiming, Stream
from ._request import QForm
from .client import AttnKind, Client, KVChunk, ModelInfo, Session, Stats, Transport
from .errors import (AbortedError, AlreadyExistsError, CancelledError, DataLossError,
                     DeadlineExceededError, Error, FailedPreconditionError, InternalError,
                     InvalidArgumentError, NotFoundError, OutOfRangeError, PermissionDeniedError,
                     ResourceExhaustedError, StatusCode, UnauthenticatedError, UnavailableError,
                     UnimplementedError, UnknownError)
from .sparse import Policy, PolicyKind, PolicyRule, Selection
from .tensors import DType, as_float32, from_bf16, to_bf16

__version__ = "0.1.0"

__all__ = [
    "Client", "Session", "Call", "Stream", "KVChunk", "ModelInfo", "Stats", "ServerTiming",
    "Transport", "AttnKind", "QForm", "DType", "Policy", "PolicyKind", "PolicyRule", "Selection", "to_bf16", "from_bf16", "as_float32",
    "StatusCode", "Error", "CancelledError", "UnknownError", "InvalidArgumentError",
    "DeadlineExceededError", "NotFoundError", "AlreadyExistsError", "PermissionDeniedError",
    "ResourceExhaustedError", "FailedPreconditionError", "AbortedError", "OutOfRangeError",
    "UnimplementedError", "InternalError", "UnavailableError", "DataLossError",
    "UnauthenticatedError", "LibraryNotFoundError", "library_path",
]
