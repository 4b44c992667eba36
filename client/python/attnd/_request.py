"""One Attend request: the Python arguments as an attnd_attend_args, and
the results it will fill.

``Request`` is built once per call (Client.attend, Client.attend_async,
Stream.attend): it resolves the session ids, the query and new-KV views
(tensors.as_wire: zero-copy when contiguous), the positions, and allocates
the output (and LSE) unless the caller passed buffers. It keeps every
Python object the C call points at alive for as long as it lives; an
async Call keeps its Request until attnd_call_wait has written the results.

Output shape: [n_seqs, S, Hq, d_v] for a 4-D query [n, S, Hq, d_k],
[n_seqs, Hq, d_v] for a 3-D one; d_v is the served model's (learned from
CreateSession or GetStats), or with up_project or the heads form (the
narrow MLA wire, ``q_form="heads"``) the width of the W_UV this client
loaded for the layer (else pass ``out=``). A query of any other shape is
still sent (the server's message names what is wrong); its output buffer
is sized for [n_seqs, Hq, d_v] of the model.
"""

from __future__ import annotations

import ctypes
import enum
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple, Union

from . import _lib
from .tensors import DType, Wire, as_wire, dtype_of, empty_like_kind, prod, to_device, writable

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client, Session

SessionLike = Union["Session", bytes, bytearray]


class QForm(enum.IntEnum):
    """Which form an MLA query has (attnd_q_form; attnd.v1 QForm).

    ABSORBED: q [.., Hq, d_latent + d_rope] (q_nope . W_UK done by the
    caller), out the latent [.., Hq, d_latent]. HEADS, the narrow wire:
    q [.., Hq, d_nope + d_rope] as a serving stack holds it, out
    [.., Hq, d_v]; the worker absorbs with the layer's W_UK and
    up-projects with its W_UV (Client.load_weights with both)."""
    ABSORBED = 0
    HEADS = 1


def q_form_of(x: Union[QForm, int, str]) -> QForm:
    """A QForm from itself, its value or its name ("heads", "absorbed")."""
    if isinstance(x, str):
        try:
            return QForm[x.upper()]
        except KeyError:
            raise ValueError(f"q_form: expected 'absorbed' or 'heads', got {x!r}") from None
    return QForm(int(x))


# Recently used batches: ids -> their ctypes array (read only to libattnd, so
# one array serves every call naming the same sessions in the same order).
_ID_CACHE: Dict[bytes, Any] = {}
_ID_CACHE_MAX = 256


def session_ids(sessions: Union[SessionLike, Sequence[SessionLike]]) -> Tuple[Any, int]:
    """(a ctypes array of attnd_session_id, n) for one session or a list."""
    if isinstance(sessions, (bytes, bytearray)) or hasattr(sessions, "id"):
        sessions = [sessions]  # type: ignore[list-item]
    raw = []
    for s in sessions:  # type: ignore[union-attr]
        b = s.id if hasattr(s, "id") else bytes(s)
        if len(b) != _lib.SESSION_ID_BYTES:
            raise ValueError(f"sessions: a session id is {_lib.SESSION_ID_BYTES} bytes, "
                             f"got {len(b)}")
        raw.append(b)
    n = len(raw)
    key = b"".join(raw)
    arr = _ID_CACHE.get(key)
    if arr is None:
        arr = (_lib.SessionId * max(n, 1))()
        if n:
            ctypes.memmove(arr, key, len(key))
        if len(_ID_CACHE) >= _ID_CACHE_MAX:
            _ID_CACHE.clear()
        _ID_CACHE[key] = arr
    return arr, n


class Request:
    """The attnd_attend_args of one call and everything it points at."""

    __slots__ = ("args", "_keep", "out", "lse", "_like", "_out_shape", "_lse_shape",
                 "_user_out", "_user_lse", "_out_flat", "_lse_flat")

    def __init__(self, client: "Client", layer: int, sessions: Any, q: Any,
                 new_kv: Any = None, positions: Optional[Sequence[int]] = None,
                 out_dtype: Any = None, return_lse: bool = False, up_project: bool = False,
                 out: Any = None, lse: Any = None,
                 q_form: Union[QForm, int, str] = QForm.ABSORBED):
        form = q_form_of(q_form)
        a = _lib.AttendArgs()
        ids, n = session_ids(sessions)
        qw = as_wire(q, "q")
        keep: list = [ids, qw.keep]
        a.layer = int(layer)
        a.n_seqs = n
        a.sessions = ids
        qw.fill(a.q, "q")
        if new_kv is not None:
            kw = as_wire(new_kv, "new_kv")
            kw.fill(a.new_kv, "new_kv")
            keep.append(kw.keep)
        if positions is not None:
            pos = [int(p) for p in positions]
            if len(pos) != n:
                raise ValueError(f"positions: expected {n} (one per session), got {len(pos)}")
            parr = (ctypes.c_uint64 * max(n, 1))(*pos)
            a.positions = parr
            keep.append(parr)
        a.up_project = 1 if up_project else 0
        a.q_form = int(form)

        odt = dtype_of(out_dtype) if out_dtype is not None else None
        self._user_out = out is not None
        self._user_lse = lse is not None
        if out is not None:
            ptr, cap, bdt = writable(out, "out")
            if odt is not None and odt != bdt:
                raise ValueError(f"out: dtype {bdt.name} differs from out_dtype {odt.name}")
            odt = bdt
        a.out_dtype = int(odt) if odt is not None else 0
        res_dt = odt if odt is not None else qw.dtype

        rows_shape = self._rows(client, qw, n)
        dv = self._d_v(client, layer, up_project or form == QForm.HEADS, out is not None)
        self._out_shape = rows_shape + (dv,)
        self._lse_shape = rows_shape
        self._like = q
        if out is None:
            size = prod(self._out_shape)
            self._out_flat = empty_like_kind(q, (max(size, 1),), res_dt)
            ptr = _ptr(self._out_flat)
            cap = max(size, 1) * res_dt.itemsize
            out = self._out_flat
        else:
            self._out_flat = None
        a.out = ptr
        a.out_capacity = cap
        self.out = out
        self.lse = None
        self._lse_flat = None
        if lse is not None or return_lse:
            if lse is not None:
                lptr, lcap, ldt = writable(lse, "lse")
                if ldt != DType.F32:
                    raise ValueError("lse: expected a float32 buffer")
                self.lse = lse
            else:
                size = prod(self._lse_shape)
                self._lse_flat = empty_like_kind(q, (max(size, 1),), DType.F32)
                lptr, lcap = _ptr(self._lse_flat), max(size, 1) * 4
                self.lse = self._lse_flat
            a.lse = ctypes.cast(ctypes.c_void_p(lptr), ctypes.POINTER(ctypes.c_float))
            a.lse_capacity = lcap // 4
        self.args = a
        self._keep = keep

    @staticmethod
    def _rows(client: "Client", qw: Wire, n: int) -> Tuple[int, ...]:
        if len(qw.shape) == 4:
            return (n, qw.shape[1], qw.shape[2])
        if len(qw.shape) == 3:
            return (n, qw.shape[1])
        return (n, client.model.n_q_heads)

    @staticmethod
    def _d_v(client: "Client", layer: int, projected: bool, have_out: bool) -> int:
        if not projected:
            return client.model.d_v
        d_vo = client._d_vo.get(int(layer))
        if d_vo is None:
            if have_out:
                return 1  # the caller sized the buffer; its shape is theirs
            raise ValueError("out: up_project and q_form='heads' return W_UV's width, which "
                             "this client does not know for layer %d (load_weights it through "
                             "this client, or pass out=)" % layer)
        return d_vo

    def results(self) -> Any:
        """The call's value once it succeeded: out, or (out, lse)."""
        out = self.out
        if not self._user_out:
            out = to_device(_view(self._out_flat, self._out_shape), self._like)
        if self.lse is None:
            return out
        lse = self.lse
        if not self._user_lse:
            lse = to_device(_view(self._lse_flat, self._lse_shape), self._like)
        return out, lse


def _ptr(x: Any) -> int:
    return int(x.data_ptr()) if hasattr(x, "data_ptr") else int(x.ctypes.data)


def _view(flat: Any, shape: Tuple[int, ...]) -> Any:
    return flat[:prod(shape)].reshape(shape)
