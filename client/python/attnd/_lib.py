"""Loading libattnd and declaring its C API (attnd/client.h) to ctypes.

This module is the only place that knows the C layout. Every structure below
mirrors one of client.h (client/lib/include) / status.h / types.h (common/)
field by field, in order, with
the same C types, so ctypes computes the same offsets as the C compiler
(tests/python/test_layout.py compares them with a program built from the
header). Enums are C ``int``.

Where libattnd.so is looked for, first hit wins:

1. ``ATTND_LIB``: the path of the library file, or a directory holding it
   (when set, nothing else is tried);
2. the package directory (a wheel built by client/python/build-wheel.sh
   bundles ``libattnd.so.0`` there);
3. a source checkout's build trees, when this package is imported from
   ``client/python`` of one: ``build/client/lib/`` and ``build/client/``;
4. the system: the dynamic linker's search (``LD_LIBRARY_PATH``,
   ``ldconfig``'s cache, e.g. after ``cmake --install``).

The library is loaded on first use (``lib()``), not at import, so that
``import attnd`` works on a machine without it; a failure raises
``LibraryNotFoundError`` listing every place tried.

ctypes releases the GIL around every foreign call, so blocking calls
(connect, Attend, waits) run in parallel from several Python threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (POINTER, Structure, c_char, c_char_p, c_float, c_int,
                    c_int32, c_int64, c_size_t, c_uint8, c_uint32, c_uint64,
                    c_void_p)
from pathlib import Path
from typing import List, Optional

SESSION_ID_BYTES = 16
ERROR_MSG_MAX = 256
MAX_DIMS = 6

_SONAMES = ("libattnd.so.0", "libattnd.so")


class LibraryNotFoundError(OSError):
    """libattnd.so was not found (or could not be loaded) anywhere it is
    looked for; the message lists each place and why it failed."""


# ---- structures (client.h order) -----------------------------------------

class Error(Structure):
    """attnd_error (status.h)."""
    _fields_ = [("code", c_int), ("msg", c_char * ERROR_MSG_MAX)]


class SessionId(Structure):
    """attnd_session_id (types.h)."""
    _fields_ = [("bytes", c_uint8 * SESSION_ID_BYTES)]


class ClientOptions(Structure):
    """attnd_client_options."""
    _fields_ = [
        ("deadline_ms", c_int64),
        ("connect_timeout_ms", c_int64),
        ("max_message_bytes", c_size_t),
        ("transport", c_int),
        ("ucx_spin_us", c_int32),
        # security (issue 15): NULL = plaintext, no token
        ("tls_ca_file", c_char_p),
        ("tls_cert_file", c_char_p),
        ("tls_key_file", c_char_p),
        ("tls_server_name", c_char_p),
        ("token", c_char_p),
    ]


class ModelInfo(Structure):
    """attnd_model_info."""
    _fields_ = [
        ("name", c_char * 64),
        ("kind", c_int),
        ("n_layers", c_uint32),
        ("n_q_heads", c_uint32),
        ("n_kv_heads", c_uint32),
        ("head_dim", c_uint32),
        ("d_latent", c_uint32),
        ("d_rope", c_uint32),
        ("scale", c_float),
        ("kv_dtype", c_int),
        ("page_size", c_uint32),
        ("d_k", c_uint32),
        ("d_v", c_uint32),
        ("kv_token_elems", c_uint32),
    ]


class KVChunk(Structure):
    """attnd_kv_chunk."""
    _fields_ = [
        ("session", SessionId),
        ("layer", c_uint32),
        ("start", c_uint64),
        ("n_tokens", c_uint32),
        ("kv_token_elems", c_uint32),
        ("dtype", c_int),
        ("data", c_void_p),
    ]


class Tensor(Structure):
    """attnd_tensor."""
    _fields_ = [
        ("dtype", c_int),
        ("ndim", c_int32),
        ("shape", c_int64 * MAX_DIMS),
        ("data", c_void_p),
    ]


class AttendArgs(Structure):
    """attnd_attend_args."""
    _fields_ = [
        ("layer", c_uint32),
        ("n_seqs", c_uint32),
        ("sessions", POINTER(SessionId)),
        ("q", Tensor),
        ("new_kv", Tensor),
        ("positions", POINTER(c_uint64)),
        ("out_dtype", c_int),
        ("out", c_void_p),
        ("out_capacity", c_size_t),
        ("lse", POINTER(c_float)),
        ("lse_capacity", c_size_t),
        ("up_project", c_int),
        ("q_form", c_int),
    ]


class SparsePolicy(Structure):
    """attnd_sparse_policy."""
    _fields_ = [
        ("kind", c_int),
        ("sink", c_uint32),
        ("window", c_uint32),
        ("topk_pages", c_uint32),
        ("topk_fraction", c_float),
    ]


class SparseRule(Structure):
    """attnd_sparse_rule."""
    _fields_ = [
        ("layer_begin", c_uint32),
        ("layer_end", c_uint32),
        ("head_begin", c_uint32),
        ("head_end", c_uint32),
        ("policy", SparsePolicy),
    ]


class SparseArgs(Structure):
    """attnd_sparse_args."""
    _fields_ = [
        ("given_groups", c_uint32),
        ("given_indptr", POINTER(c_uint32)),
        ("given_idx", POINTER(c_uint64)),
        ("n_given_idx", c_size_t),
        ("return_pages", c_int),
        ("chosen_indptr", POINTER(c_uint32)),
        ("chosen_indptr_capacity", c_size_t),
        ("chosen", POINTER(c_uint64)),
        ("chosen_capacity", c_size_t),
        ("chosen_groups", c_uint32),
        ("chosen_tokens", c_int),
        ("n_chosen_lists", c_size_t),
        ("n_chosen", c_size_t),
    ]


class ServerTiming(Structure):
    """attnd_server_timing."""
    _fields_ = [
        ("valid", c_int),
        ("queue_ns", c_uint64),
        ("validate_ns", c_uint64),
        ("kernel_ns", c_uint64),
        ("fanout_ns", c_uint64),
        ("encode_ns", c_uint64),
    ]


class Stats(Structure):
    """attnd_stats."""
    _fields_ = [
        ("sessions", c_uint64),
        ("max_sessions", c_uint64),
        ("pages_total", c_uint64),
        ("pages_used", c_uint64),
        ("pages_reserved", c_uint64),
        ("page_bytes", c_uint64),
        ("attend_calls", c_uint64),
        ("attend_sequences", c_uint64),
        ("append_calls", c_uint64),
        ("tokens_appended", c_uint64),
        ("errors", c_uint64),
        ("kv_bytes_read", c_uint64),
        ("uptime_ms", c_uint64),
        ("group_size", c_uint32),
        ("group_rank", c_uint32),
        ("group_connected", c_uint32),
        ("group_mode", c_char * 16),
        ("group_missing", c_char * 128),
        ("group_peer_failures", c_uint64),
        ("kv_bytes_dense", c_uint64),
        ("select_bytes_read", c_uint64),
        ("select_ns", c_uint64),
        ("select_calls", c_uint64),
        ("pages_evicted", c_uint64),
        ("ucx_endpoints", c_uint32),
        ("ucx_transports", c_char * 512),
        ("stats_scope", c_char * 80),
        ("sessions_expired", c_uint64),
        ("pages_expired", c_uint64),
    ]


STRUCTS = {
    "attnd_error": Error,
    "attnd_session_id": SessionId,
    "attnd_client_options": ClientOptions,
    "attnd_model_info": ModelInfo,
    "attnd_kv_chunk": KVChunk,
    "attnd_tensor": Tensor,
    "attnd_attend_args": AttendArgs,
    "attnd_sparse_policy": SparsePolicy,
    "attnd_sparse_rule": SparseRule,
    "attnd_sparse_args": SparseArgs,
    "attnd_server_timing": ServerTiming,
    "attnd_stats": Stats,
}

# ---- functions --------------------------------------------------------------

_p = c_void_p  # opaque handles: attnd_client *, attnd_call *, attnd_stream *
_E = POINTER(Error)

_PROTOS = {
    "attnd_client_options_init": (None, [POINTER(ClientOptions)]),
    "attnd_client_connect": (c_int, [c_char_p, POINTER(ClientOptions), POINTER(_p), _E]),
    "attnd_client_destroy": (None, [_p]),
    "attnd_client_create_session": (
        c_int, [_p, c_char_p, c_uint32, POINTER(SessionId), POINTER(ModelInfo), _E]),
    "attnd_client_create_session_policy": (
        c_int, [_p, c_char_p, c_uint32, POINTER(SparsePolicy), POINTER(SparseRule), c_uint32,
                POINTER(SessionId), POINTER(ModelInfo), _E]),
    "attnd_client_close_session": (c_int, [_p, POINTER(SessionId), _E]),
    "attnd_client_append_kv": (c_int, [_p, POINTER(KVChunk), c_size_t, POINTER(c_size_t), _E]),
    "attnd_client_attend": (c_int, [_p, POINTER(AttendArgs), _E]),
    "attnd_client_attend_sparse": (c_int, [_p, POINTER(AttendArgs), POINTER(SparseArgs), _E]),
    "attnd_client_attend_async": (c_int, [_p, POINTER(AttendArgs), POINTER(_p), _E]),
    "attnd_client_attend_sparse_async": (
        c_int, [_p, POINTER(AttendArgs), POINTER(SparseArgs), POINTER(_p), _E]),
    "attnd_call_wait": (c_int, [_p, _E]),
    "attnd_call_wait_timed": (c_int, [_p, POINTER(ServerTiming), _E]),
    "attnd_client_stream_open": (c_int, [_p, POINTER(_p), _E]),
    "attnd_stream_attend": (c_int, [_p, POINTER(AttendArgs), _E]),
    "attnd_stream_attend_sparse": (c_int, [_p, POINTER(AttendArgs), POINTER(SparseArgs), _E]),
    "attnd_stream_close": (c_int, [_p, _E]),
    "attnd_client_get_stats": (c_int, [_p, POINTER(Stats), POINTER(ModelInfo), _E]),
    "attnd_client_load_weights": (c_int, [_p, c_uint32, POINTER(Tensor), POINTER(c_uint64), _E]),
    "attnd_client_load_mla_weights": (
        c_int, [_p, c_uint32, POINTER(Tensor), POINTER(Tensor), POINTER(c_uint64), _E]),
    "attnd_client_health": (c_int, [_p, c_char_p, POINTER(c_int), _E]),
}

FUNCTIONS = tuple(_PROTOS)

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_path: Optional[str] = None


def _candidates() -> List[str]:
    """Where to look, in order (see the module docstring)."""
    out: List[str] = []
    env = os.environ.get("ATTND_LIB")
    if env:
        p = Path(env)
        if p.is_dir():
            out += [str(p / n) for n in _SONAMES]
        else:
            out.append(str(p))
        return out  # an explicit choice: nothing else is tried
    here = Path(__file__).resolve().parent
    out += [str(here / n) for n in _SONAMES]
    # client/python/attnd -> the checkout's root is three levels up
    root = here.parent.parent.parent
    if (root / "client" / "python" / "pyproject.toml").is_file():
        for sub in ("build/client/lib", "build/client"):
            out += [str(root / sub / n) for n in _SONAMES]
    found = ctypes.util.find_library("attnd")
    out += [n for n in ((found,) if found else ())] + list(_SONAMES)
    return out


def _declare(lib: ctypes.CDLL) -> None:
    for name, (res, args) in _PROTOS.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args


def lib() -> ctypes.CDLL:
    """The loaded libattnd, its functions declared. Loads it on first call."""
    global _lib, _path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        for cand in _candidates():
            if os.sep in cand and not os.path.exists(cand):
                tried.append(f"{cand}: no such file")
                continue
            try:
                handle = ctypes.CDLL(cand)
                _declare(handle)
            except (OSError, AttributeError) as e:
                tried.append(f"{cand}: {e}")
                continue
            _path = getattr(handle, "_name", cand)
            _lib = handle
            return _lib
        raise LibraryNotFoundError(
            "libattnd not found; set ATTND_LIB to the path of libattnd.so. Tried:\n  "
            + "\n  ".join(tried))


def library_path() -> str:
    """The path (or soname) libattnd was loaded from; loads it if needed."""
    lib()
    assert _path is not None
    return _path
