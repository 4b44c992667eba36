"""The client: a connection to one attnd worker (or any rank of a group).

``Client`` wraps an ``attnd_client`` (one gRPC channel; with
``transport="ucx"`` Attend travels over UCX active messages). Every public
function of client/lib/include/attnd/client.h is reachable from here:

| client.h                            | Python                               |
| ----------------------------------- | ------------------------------------ |
| attnd_client_connect / _destroy     | Client(target, ...), close(), with   |
| attnd_client_create_session         | Client.create_session / session      |
| attnd_client_create_session_policy  | create_session(policy=, ...)         |
| attnd_client_close_session          | Session.close, with                  |
| attnd_client_append_kv              | Client.append_kv, Session.append_kv  |
| attnd_client_attend                 | Client.attend                        |
| attnd_client_attend_sparse          | Client.attend(given=, return_pages=) |
| attnd_client_attend_async           | Client.attend_async -> Call          |
| attnd_client_attend_sparse_async    | attend_async(given=, return_pages=)  |
| attnd_call_wait / _wait_timed       | Call.wait, await Call, Call.timing   |
|                                     | (calls.py)                           |
| attnd_client_stream_open            | Client.stream -> Stream              |
| attnd_stream_attend / _close        | Stream.attend, Stream.close, with    |
| attnd_stream_attend_sparse          | Stream.attend(given=, return_pages=) |
| attnd_client_get_stats              | Client.stats, Client.model           |
| attnd_client_load_weights           | Client.load_weights                  |
| attnd_client_load_mla_weights       | Client.load_weights(w_uk=...)        |
| attnd_client_health                 | Client.health                        |

Threads: a Client may be used from many threads at once (libattnd's own
rule; ctypes releases the GIL during each call). ``close()`` refuses new
calls, waits for calls in flight, waits any async Call nobody waited and
closes open streams, then frees the C client. Objects that hold C handles
(Client, Call, Stream) release them when garbage-collected if nobody did.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import enum
import os
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _lib
from .errors import Error, make_error
from .tensors import DType, as_wire
from ._request import QForm, Request, SessionLike
from .calls import Call, Stream
from .sparse import PolicyLike, PolicyRule, SessionPolicy, session_policy, sparse_request


class Transport(enum.IntEnum):
    """How Attend travels (attnd_transport); control calls always use gRPC."""
    GRPC = 0
    UCX = 1


class AttnKind(enum.IntEnum):
    """The served model's attention (attnd_attn_kind)."""
    INVALID = 0
    MLA = 1
    GQA = 2


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the worker serves (attnd_model_info).

    d_k: query width per head; d_v: output width per head; kv_token_elems:
    elements of one token's KV entry (MLA d_latent + d_rope, GQA
    2 * n_kv_heads * head_dim)."""
    name: str
    kind: AttnKind
    n_layers: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    d_latent: int
    d_rope: int
    scale: float
    kv_dtype: DType
    page_size: int
    d_k: int
    d_v: int
    kv_token_elems: int

    @classmethod
    def _from_c(cls, m: _lib.ModelInfo) -> "ModelInfo":
        return cls(m.name.decode(errors="replace"), AttnKind(m.kind), m.n_layers, m.n_q_heads,
                   m.n_kv_heads, m.head_dim, m.d_latent, m.d_rope, float(m.scale),
                   DType(m.kv_dtype), m.page_size, m.d_k, m.d_v, m.kv_token_elems)


@dataclasses.dataclass(frozen=True)
class Stats:
    """GetStats (attnd_stats); group_* are 0 / "" on a lone worker."""
    sessions: int
    max_sessions: int
    pages_total: int
    pages_used: int
    pages_reserved: int
    page_bytes: int
    attend_calls: int
    attend_sequences: int
    append_calls: int
    tokens_appended: int
    errors: int
    kv_bytes_read: int
    uptime_ms: int
    group_size: int
    group_rank: int
    group_connected: int
    group_mode: str
    group_missing: str
    group_peer_failures: int
    kv_bytes_dense: int      # sparse policies: what dense attention would have read
    select_bytes_read: int   # key bounds read by page selection
    select_ns: int
    select_calls: int
    pages_evicted: int       # pages streaming gave back to the pool
    ucx_endpoints: int     # UCX endpoints the server holds (clients, peers)
    ucx_transports: str    # "client 3 (pid 1234): sysv/memory cma/memory; rank 1: tcp/lo"
    # whose figures: "global", or "tenant NAME" (a tenant's token on a
    # server with --token-file: the figures above are its own, max_sessions
    # and pages_total its limits); sessions closed by --session-idle-ttl
    # and the pages they gave back
    stats_scope: str
    sessions_expired: int
    pages_expired: int
    model: ModelInfo


@dataclasses.dataclass
class KVChunk:
    """One prefill chunk for AppendKV: ``kv`` is [n_tokens, ...] (MLA
    [T, d_latent + d_rope], GQA [T, 2, Hkv, D] or [T, 2*Hkv*D]) for
    ``layer`` of ``session``, landing at token ``start``."""
    session: SessionLike
    layer: int
    start: int
    kv: Any


class _Guard:
    """Counts calls in flight so that close() can wait for them."""

    __slots__ = ("_cv", "_active", "closed")

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._active = 0
        self.closed = False

    def enter(self) -> None:
        """Count a call in; ValueError once the client is closing."""
        with self._cv:
            if self.closed:
                raise ValueError("attnd client is closed")
            self._active += 1

    def leave(self) -> None:
        with self._cv:
            self._active -= 1
            if self._active == 0:
                self._cv.notify_all()

    def __enter__(self) -> "_Guard":
        self.enter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.leave()

    def close(self) -> bool:
        """Refuse new calls from now on; False if already closed."""
        with self._cv:
            if self.closed:
                return False
            self.closed = True
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to timeout seconds for no call in flight; True when none is."""
        with self._cv:
            if self._active:
                self._cv.wait(timeout)
            return self._active == 0


def _check(st: int, err: _lib.Error, applied: Optional[int] = None) -> None:
    if st != 0:
        raise make_error(st, err.msg.decode(errors="replace"), applied)


class Client:
    """A connection to an attnd worker.

    ``target`` is "host:port" (any gRPC target). Options left None take
    libattnd's defaults: deadline_ms 30000 per call (streams: per message),
    connect_timeout_ms 5000, max_message_bytes 256 MiB, transport "grpc",
    ucx_spin_us 1000. Connecting waits for the channel; a server that is not
    there is ``UnavailableError``.

    Security (the server's --tls-cert and --token-file; README "Security"):
    ``tls_ca_file`` (PEM CA the server's certificate must lead to) turns on
    TLS; ``tls_cert_file`` and ``tls_key_file`` are this client's
    certificate and key for mutual TLS; ``tls_server_name`` the name the
    server's certificate carries when the target's host is not it (an IP
    target); ``token`` is sent as "authorization: Bearer TOKEN" with every
    call. A failed TLS handshake (a CA that did not sign the server, no
    client certificate where one is required) is ``UnavailableError``; a
    token the server does not know fails each call ``UnauthenticatedError``.
    libattnd keeps copies: the files are read at connect.

    Use as a context manager (``with attnd.Client(...) as c:``) or call
    ``close()``.
    """

    def __init__(self, target: str, *, transport: Union[Transport, str] = Transport.GRPC,
                 deadline_ms: Optional[int] = None, connect_timeout_ms: Optional[int] = None,
                 max_message_bytes: Optional[int] = None, ucx_spin_us: Optional[int] = None,
                 tls_ca_file: Optional[str] = None, tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None, tls_server_name: Optional[str] = None,
                 token: Optional[str] = None):
        self._L = _lib.lib()
        self._h: Optional[int] = None
        self._guard = _Guard()
        self._reg_lock = threading.Lock()
        self._calls: Dict[int, "Call"] = {}
        self._streams: Dict[int, "Stream"] = {}
        self._model: Optional[ModelInfo] = None
        self._d_vo: Dict[int, int] = {}
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self.target = target
        o = _lib.ClientOptions()
        self._L.attnd_client_options_init(ctypes.byref(o))
        if isinstance(transport, str):
            transport = Transport[transport.upper()]
        o.transport = int(transport)
        if deadline_ms is not None:
            o.deadline_ms = int(deadline_ms)
        if connect_timeout_ms is not None:
            o.connect_timeout_ms = int(connect_timeout_ms)
        if max_message_bytes is not None:
            o.max_message_bytes = int(max_message_bytes)
        if ucx_spin_us is not None:
            o.ucx_spin_us = int(ucx_spin_us)
        # the bytes stay referenced here until connect has copied them
        sec = {k: os.fsencode(v) if k.endswith("_file") else str(v).encode()
               for k, v in (("tls_ca_file", tls_ca_file), ("tls_cert_file", tls_cert_file),
                            ("tls_key_file", tls_key_file),
                            ("tls_server_name", tls_server_name), ("token", token))
               if v is not None}
        for k, v in sec.items():
            setattr(o, k, v)
        self.transport = Transport(o.transport)
        h = ctypes.c_void_p()
        err = _lib.Error()
        st = self._L.attnd_client_connect(target.encode(), ctypes.byref(o), ctypes.byref(h),
                                          ctypes.byref(err))
        _check(st, err)
        self._h = h.value

    # ---- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent). Waits for calls in flight,
        waits async Calls nobody waited (a later wait() still returns their
        outcome), closes open Streams; sessions stay open on the server."""
        if self._h is None or not self._guard.close():
            return
        while True:  # a call started just before close() registers a moment later
            with self._reg_lock:
                calls, streams = list(self._calls.values()), list(self._streams.values())
            for call in calls:
                call._finish_quietly()
            for s in streams:
                s._close_quietly()
            if self._guard.wait_idle(0.05):
                break
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        h, self._h = self._h, None
        self._L.attnd_client_destroy(h)

    @property
    def closed(self) -> bool:
        """True once close() has begun."""
        return self._guard.closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing to report to
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.transport.name.lower()
        return f"<attnd.Client {self.target} {state}>"

    # ---- control calls ---------------------------------------------------------

    def health(self, service: str = "") -> bool:
        """grpc.health.v1 Check: True when `service` ("" = the server; also
        "attnd.v1.Attnd", and "attnd.v1.Group" on a group rank) is SERVING."""
        serving = ctypes.c_int()
        err = _lib.Error()
        with self._guard:
            st = self._L.attnd_client_health(self._h, service.encode(), ctypes.byref(serving),
                                             ctypes.byref(err))
        _check(st, err)
        return bool(serving.value)

    def stats(self) -> Stats:
        """GetStats: counters, the group's state and the served model."""
        s = _lib.Stats()
        m = _lib.ModelInfo()
        err = _lib.Error()
        with self._guard:
            st = self._L.attnd_client_get_stats(self._h, ctypes.byref(s), ctypes.byref(m),
                                                ctypes.byref(err))
        _check(st, err)
        model = ModelInfo._from_c(m)
        self._model = model
        vals = {f.name: getattr(s, f.name) for f in dataclasses.fields(Stats) if f.name != "model"}
        vals["group_mode"] = s.group_mode.decode(errors="replace")
        vals["group_missing"] = s.group_missing.decode(errors="replace")
        vals["ucx_transports"] = s.ucx_transports.decode(errors="replace")
        vals["stats_scope"] = s.stats_scope.decode(errors="replace")
        return Stats(model=model, **vals)

    @property
    def model(self) -> ModelInfo:
        """The served model, as the last CreateSession or GetStats reported
        it (one GetStats if this client has seen neither)."""
        if self._model is None:
            self.stats()
        assert self._model is not None
        return self._model

    def create_session(self, max_tokens: int = 0, model: Optional[str] = None, *,
                       policy: Optional[PolicyLike] = None,
                       policy_table: Optional[Sequence[Union[PolicyRule, tuple]]] = None
                       ) -> "Session":
        """CreateSession: a new sequence, reserving pages for `max_tokens`
        (0: none). `model` None or "" means the worker's model.

        policy: the sparse attention policy of every layer and head (an
        attnd.Policy or its text, "topk-pages,fraction=0.125,sink=64";
        None: full); policy_table: PolicyRule rows (or tuples (layer_begin,
        layer_end, policy[, head_begin, head_end])) overriding it for layer
        and, GQA only, KV head ranges, later rows winning
        (worker/SPARSE.md). A policy or table the server refuses is
        InvalidArgumentError naming the field ("policy.window",
        "policy_table[1].layer_end")."""
        sid = _lib.SessionId()
        m = _lib.ModelInfo()
        err = _lib.Error()
        sp = SessionPolicy.of(policy, policy_table)
        if policy is None and not policy_table:
            with self._guard:
                st = self._L.attnd_client_create_session(
                    self._h, (model or "").encode(), int(max_tokens), ctypes.byref(sid),
                    ctypes.byref(m), ctypes.byref(err))
        else:
            pol, rules, n_rules = session_policy(sp)
            with self._guard:
                st = self._L.attnd_client_create_session_policy(
                    self._h, (model or "").encode(), int(max_tokens), pol, rules, n_rules,
                    ctypes.byref(sid), ctypes.byref(m), ctypes.byref(err))
        _check(st, err)
        info = ModelInfo._from_c(m)
        self._model = info
        return Session(self, bytes(sid.bytes), info, sp)

    def session(self, max_tokens: int = 0, model: Optional[str] = None, *,
                policy: Optional[PolicyLike] = None,
                policy_table: Optional[Sequence[Union[PolicyRule, tuple]]] = None
                ) -> "Session":
        """create_session, named for ``with client.session() as s:``."""
        return self.create_session(max_tokens, model, policy=policy, policy_table=policy_table)

    def close_session(self, session: SessionLike) -> None:
        """CloseSession by Session or id bytes; NotFoundError if unknown."""
        sid = _lib.SessionId()
        b = bytes(session.id if isinstance(session, Session) else session)
        if len(b) != _lib.SESSION_ID_BYTES:
            raise ValueError(f"session: an id is {_lib.SESSION_ID_BYTES} bytes, got {len(b)}")
        ctypes.memmove(sid.bytes, b, len(b))
        err = _lib.Error()
        with self._guard:
            st = self._L.attnd_client_close_session(self._h, ctypes.byref(sid), ctypes.byref(err))
        _check(st, err)

    def append_kv(self, chunks: Iterable[Union[KVChunk, Tuple[SessionLike, int, int, Any]]]) -> int:
        """AppendKV: send the chunks in order over one stream, applied all
        or nothing (each chunk starts where its layer ends counting the
        chunks before it in this call); returns how many were applied (all
        of them). On failure none is applied (the Error's ``applied`` is 0)
        and the call can be retried whole."""
        cs: List[KVChunk] = [c if isinstance(c, KVChunk) else KVChunk(*c) for c in chunks]
        arr = (_lib.KVChunk * max(len(cs), 1))()
        keep = []
        for i, c in enumerate(cs):
            w = as_wire(c.kv, f"chunks[{i}].kv")
            keep.append(w.keep)
            b = bytes(c.session.id if isinstance(c.session, Session) else c.session)
            if len(b) != _lib.SESSION_ID_BYTES:
                raise ValueError(f"chunks[{i}].session: an id is {_lib.SESSION_ID_BYTES} bytes")
            ctypes.memmove(arr[i].session.bytes, b, len(b))
            arr[i].layer = int(c.layer)
            arr[i].start = int(c.start)
            arr[i].n_tokens = w.shape[0] if w.shape else 0
            arr[i].kv_token_elems = (w.nbytes // w.dtype.itemsize // w.shape[0]
                                     if w.shape and w.shape[0] else 0)
            arr[i].dtype = int(w.dtype)
            arr[i].data = w.ptr or None
        applied = ctypes.c_size_t()
        err = _lib.Error()
        with self._guard:
            st = self._L.attnd_client_append_kv(self._h, arr, len(cs), ctypes.byref(applied),
                                                ctypes.byref(err))
        _check(st, err, applied.value)
        return len(cs)

    def load_weights(self, layer: int, w_uv: Any = None, *, w_uk: Any = None) -> int:
        """LoadWeights: an MLA layer's W_UV [Hq, d_latent, d_v] and/or W_UK
        [Hq, d_nope, d_latent] (f32/f16/bf16; at least one) for the worker
        (lone or group). With W_UV, attend(..., up_project=True) returns
        latent output x W_UV; with both, attend(..., q_form="heads") takes
        q [.., Hq, d_nope + d_rope] and returns [.., Hq, d_v] (the narrow
        wire). A load replaces the matrices it carries and keeps the other.
        Returns the bytes the contacted worker (rank) now holds for the
        layer (bf16 kept as bf16, anything else as float32)."""
        if w_uv is None and w_uk is None:
            raise ValueError("load_weights: give w_uv, w_uk or both")
        wires = {name: as_wire(x, name) for name, x in (("w_uk", w_uk), ("w_uv", w_uv))
                 if x is not None}
        ts = {}
        for name, w in wires.items():
            ts[name] = _lib.Tensor()
            w.fill(ts[name], name)
        nbytes = ctypes.c_uint64()
        err = _lib.Error()
        with self._guard:
            st = self._L.attnd_client_load_mla_weights(
                self._h, int(layer), *(ctypes.byref(ts[n]) if n in ts else None
                                       for n in ("w_uk", "w_uv")),
                ctypes.byref(nbytes), ctypes.byref(err))
        _check(st, err)
        if "w_uv" in wires and len(wires["w_uv"].shape) == 3:
            self._d_vo[int(layer)] = wires["w_uv"].shape[2]
        return nbytes.value

    # ---- Attend ----------------------------------------------------------------

    def attend(self, layer: int, sessions: Union[SessionLike, Sequence[SessionLike]], q: Any, *,
               new_kv: Any = None, positions: Optional[Sequence[int]] = None,
               out_dtype: Any = None, return_lse: bool = False, up_project: bool = False,
               out: Any = None, lse: Any = None,
               q_form: Union[QForm, int, str] = QForm.ABSORBED,
               given: Any = None, return_pages: bool = False,
               chosen_capacity: Optional[int] = None) -> Any:
        """Attend: one layer's decode step for a batch of sessions.

        q: [n, Hq, d_k] or [n, S, Hq, d_k] (S query tokens, causal among
        themselves); new_kv: None, or each session's new entry ([n, entry]
        or [n, S, entry]; MLA entry d_latent + d_rope, GQA [2, Hkv, D]),
        appended before attending; positions: where each session's first
        new entry must land (else FAILED_PRECONDITION). out_dtype: q's by
        default. up_project: the layer's W_UV applied to the latent output
        (see load_weights). q_form (MLA): "absorbed" (the default; q
        [.., Hq, d_latent + d_rope]) or "heads", the narrow wire: q
        [.., Hq, d_nope + d_rope] (q_nope, q_rope per head) and out
        [.., Hq, d_v], the worker applying the W_UK and W_UV loaded for the
        layer (else FAILED_PRECONDITION naming q_form).

        Sparse sessions (attnd.sparse): given, the pages or tokens each
        session attends on a given-pages / given-tokens layer (an
        attnd.Selection, or per session a list, or a list per KV head);
        return_pages: also return what was attended, an attnd.Selection
        sized from positions, else from chosen_capacity (entries).
        attend_async and Stream.attend take the same sparse arguments.

        Returns out ([n, (S,) Hq, d_v], numpy or torch like q), or
        (out, lse) with return_lse (lse float32 [n, (S,) Hq], natural log),
        then the Selection with return_pages: (out, sel), (out, lse, sel).
        ``out=`` / ``lse=``: write into these contiguous buffers instead.
        """
        req = Request(self, layer, sessions, q, new_kv, positions, out_dtype, return_lse,
                      up_project, out, lse, q_form)
        sp = sparse_request(self, layer, sessions, q, req.args.n_seqs, given, return_pages,
                            positions, new_kv is not None, chosen_capacity)
        err = _lib.Error()
        with self._guard:
            if sp is None:
                st = self._L.attnd_client_attend(self._h, ctypes.byref(req.args),
                                                 ctypes.byref(err))
            else:
                st = self._L.attnd_client_attend_sparse(self._h, ctypes.byref(req.args),
                                                        ctypes.byref(sp.args), ctypes.byref(err))
        _check(st, err)
        return req.results() if sp is None else sp.results(req.results())

    def attend_async(self, layer: int, sessions: Union[SessionLike, Sequence[SessionLike]],
                     q: Any, *, new_kv: Any = None, positions: Optional[Sequence[int]] = None,
                     out_dtype: Any = None, return_lse: bool = False, up_project: bool = False,
                     out: Any = None, lse: Any = None,
                     q_form: Union[QForm, int, str] = QForm.ABSORBED,
                     given: Any = None, return_pages: bool = False,
                     chosen_capacity: Optional[int] = None) -> "Call":
        """Start an Attend (arguments as attend) and return at once: the
        request is sent before this returns, so q, new_kv and the given
        lists may be reused. Get the result with ``call.wait()`` or
        ``await call``: what attend returns, the attnd.Selection last with
        return_pages (each call has its own buffers for it, so several may
        be in flight). Pipelined TidalDecode: start layer 0 of a
        micro-batch with return_pages, wait it while others run, and start
        its later layers with ``given=`` that Selection. A server refusal
        (bad given indices: InvalidArgumentError naming the field, as from
        attend) is raised by the wait; what libattnd refuses before
        sending is raised here."""
        req = Request(self, layer, sessions, q, new_kv, positions, out_dtype, return_lse,
                      up_project, out, lse, q_form)
        sp = sparse_request(self, layer, sessions, q, req.args.n_seqs, given, return_pages,
                            positions, new_kv is not None, chosen_capacity, own_buffers=True)
        h = ctypes.c_void_p()
        err = _lib.Error()
        self._guard.enter()
        try:
            if sp is None:
                st = self._L.attnd_client_attend_async(self._h, ctypes.byref(req.args),
                                                       ctypes.byref(h), ctypes.byref(err))
            else:
                st = self._L.attnd_client_attend_sparse_async(
                    self._h, ctypes.byref(req.args), ctypes.byref(sp.args), ctypes.byref(h),
                    ctypes.byref(err))
        except BaseException:
            self._guard.leave()
            raise
        if st != 0:
            self._guard.leave()
            _check(st, err)
        call = Call(self, h.value, req, sp)
        with self._reg_lock:
            self._calls[id(call)] = call
        return call

    def stream(self) -> "Stream":
        """Open an AttendStream for a decode loop (see Stream)."""
        h = ctypes.c_void_p()
        err = _lib.Error()
        self._guard.enter()
        try:
            st = self._L.attnd_client_stream_open(self._h, ctypes.byref(h), ctypes.byref(err))
        except BaseException:
            self._guard.leave()
            raise
        if st != 0:
            self._guard.leave()
            _check(st, err)
        s = Stream(self, h.value)
        with self._reg_lock:
            self._streams[id(s)] = s
        return s

    def _executor_for_waits(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._reg_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=64, thread_name_prefix="attnd-wait")
            return self._executor

    def _forget(self, reg: Dict[int, Any], obj: Any) -> None:
        with self._reg_lock:
            reg.pop(id(obj), None)


class Session:
    """One sequence's KV on the worker (all layers). ``id`` is the opaque
    16-byte session id; ``model`` what CreateSession reported;
    ``sparse_policy`` the policy and table it was created with. Close it
    with close() or by leaving a ``with`` block (also on an exception)."""

    def __init__(self, client: Client, sid: bytes, model: ModelInfo,
                 sparse_policy: Optional[SessionPolicy] = None):
        self.client = client
        self.id = sid
        self.model = model
        self.sparse_policy = sparse_policy or SessionPolicy()
        self.closed = False

    def close(self) -> None:
        """CloseSession (idempotent)."""
        if self.closed:
            return
        self.client.close_session(self)
        self.closed = True

    def append_kv(self, layer: int, kv: Any, start: int = 0) -> None:
        """AppendKV of one chunk: kv [T, entry...] at token `start` of `layer`."""
        self.client.append_kv([KVChunk(self, layer, start, kv)])

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # never hide the exception that is unwinding
            self.close()
        except (Error, ValueError):
            pass

    def __repr__(self) -> str:
        return f"<attnd.Session {self.id.hex()}{' closed' if self.closed else ''}>"
