"""Calls in flight: an async Attend (``Call``) and an AttendStream (``Stream``).

Both hold a C handle that must be finished exactly once (attnd_call_wait /
attnd_stream_close) and a slot in their client's in-flight count, which the
finishing returns; Client.close() finishes those nobody finished. A Call
keeps its Request (the output buffers the reply is written into) and, for
a sparse call, its SparseRequest (the given lists and the buffers the
chosen lists are written into) until the wait. Waiting is serialized by a per-object lock, so a Call or Stream may
be handed between threads.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from . import _lib
from ._request import QForm, Request, SessionLike
from .errors import Error, make_error
from .sparse import SparseRequest, sparse_request

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client


def _check(st: int, err: _lib.Error) -> None:
    if st != 0:
        raise make_error(st, err.msg.decode(errors="replace"))


@dataclasses.dataclass(frozen=True)
class ServerTiming:
    """The server's account of one Attend, in nanoseconds (see client.h):
    queue, validation, kernel, rank fan-out + combine, reply encoding."""
    queue_ns: int
    validate_ns: int
    kernel_ns: int
    fanout_ns: int
    encode_ns: int


class Call:
    """An Attend in flight (attnd_call). Wait exactly once: ``wait()``
    blocks the calling thread; ``await call`` waits on a thread of the
    client's executor and does not block the event loop. After a
    successful wait, ``timing`` holds the server's ServerTiming (None if
    it sent none). A Call nobody waited is waited when it is collected or
    when its client closes. A sparse call (``given=`` / ``return_pages``)
    returns its attnd.Selection last, as Client.attend does."""

    def __init__(self, client: Client, handle: int, req: Request,
                 sparse: Optional[SparseRequest] = None):
        self._client = client
        self._h: Optional[int] = handle  # None once waited in C
        self._req: Optional[Request] = req
        self._sparse: Optional[SparseRequest] = sparse
        self._lock = threading.Lock()
        self._result: Any = None
        self._exc: Optional[BaseException] = None
        self._taken = False  # wait() has returned or raised the outcome
        self.timing: Optional[ServerTiming] = None

    def _finish(self) -> None:
        """Wait in C once and record the outcome (self._lock held)."""
        if self._h is None:
            return
        h, self._h = self._h, None
        t = _lib.ServerTiming()
        err = _lib.Error()
        try:
            st = self._client._L.attnd_call_wait_timed(h, ctypes.byref(t), ctypes.byref(err))
        finally:
            self._client._guard.leave()
            self._client._forget(self._client._calls, self)
        req, self._req = self._req, None
        sp, self._sparse = self._sparse, None
        if st != 0:
            self._exc = make_error(st, err.msg.decode(errors="replace"))
            return
        if t.valid:
            self.timing = ServerTiming(t.queue_ns, t.validate_ns, t.kernel_ns,
                                       t.fanout_ns, t.encode_ns)
        assert req is not None
        self._result = req.results() if sp is None else sp.results(req.results())

    def wait(self) -> Any:
        """Block until the reply; return what attend would (or raise its
        error). A Call is waited once: a second wait is a ValueError."""
        with self._lock:
            if self._taken:
                raise ValueError("attnd call was already waited")
            self._finish()
            self._taken = True
            res, exc = self._result, self._exc
            self._result = self._exc = None
        if exc is not None:
            raise exc
        return res

    def _finish_quietly(self) -> None:
        with self._lock:
            self._finish()

    def __await__(self):
        import asyncio
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._client._executor_for_waits(), self.wait).__await__()

    def __del__(self) -> None:
        try:
            if self._h is not None:
                self._finish_quietly()
        except Exception:
            pass


class Stream:
    """An AttendStream: ``attend`` sends one request and waits for its
    response (arguments and result as Client.attend). The first failure
    ends the stream: that call raises, every later one raises the same
    error; close it and open another. A request refused before it was sent
    (a bad buffer) leaves the stream usable. Calls are serialized (one at a
    time, from any thread)."""

    def __init__(self, client: Client, handle: int):
        self._client = client
        self._h: Optional[int] = handle
        self._lock = threading.Lock()
        self._failed = False  # a failure was already raised to the caller

    def attend(self, layer: int, sessions: Union[SessionLike, Sequence[SessionLike]], q: Any, *,
               new_kv: Any = None, positions: Optional[Sequence[int]] = None,
               out_dtype: Any = None, return_lse: bool = False, up_project: bool = False,
               out: Any = None, lse: Any = None,
               q_form: Union[QForm, int, str] = QForm.ABSORBED,
               given: Any = None, return_pages: bool = False,
               chosen_capacity: Optional[int] = None) -> Any:
        """One request on the stream; arguments and result as Client.attend,
        sparse ones included: ``given=`` an attnd.Selection (or lists) for
        a given-pages / given-tokens layer, ``return_pages=True`` to get
        the Selection attended last in the result. A request the server
        refuses (bad given indices: InvalidArgumentError naming the field)
        ends the stream."""
        req = Request(self._client, layer, sessions, q, new_kv, positions, out_dtype, return_lse,
                      up_project, out, lse, q_form)
        sp = sparse_request(self._client, layer, sessions, q, req.args.n_seqs, given,
                            return_pages, positions, new_kv is not None, chosen_capacity)
        err = _lib.Error()
        with self._lock:
            if self._h is None:
                raise ValueError("attnd stream is closed")
            if sp is None:
                st = self._client._L.attnd_stream_attend(self._h, ctypes.byref(req.args),
                                                         ctypes.byref(err))
            else:
                st = self._client._L.attnd_stream_attend_sparse(
                    self._h, ctypes.byref(req.args), ctypes.byref(sp.args), ctypes.byref(err))
            if st != 0:
                self._failed = True
        _check(st, err)
        return req.results() if sp is None else sp.results(req.results())

    def close(self) -> None:
        """Half-close and collect the final status (idempotent). Raises the
        stream's error only if no attend has raised it already."""
        with self._lock:
            if self._h is None:
                return
            h, self._h = self._h, None
            err = _lib.Error()
            try:
                st = self._client._L.attnd_stream_close(h, ctypes.byref(err))
            finally:
                self._client._guard.leave()
                self._client._forget(self._client._streams, self)
        if not self._failed:
            _check(st, err)

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Error:
            pass

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_quietly()

    def __del__(self) -> None:
        try:
            if self._h is not None:
                self._close_quietly()
        except Exception:
            pass
