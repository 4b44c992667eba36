"""Tensors: numpy arrays and torch tensors as attnd_tensor views, and back.

What goes out (queries, KV, weights) is described to libattnd by pointer,
dtype and shape: a C-contiguous array of a wire dtype is passed as it is
(zero-copy; libattnd copies it once, into the request). Anything else is
copied first, silently: a non-contiguous view, a big-endian array, a CUDA
tensor (to host memory; GPU-resident buffers are future work).

Wire dtypes and how Python spells them:

| attnd | torch          | numpy                                               |
| ----- | -------------- | --------------------------------------------------- |
| f32   | torch.float32  | numpy.float32                                       |
| f16   | torch.float16  | numpy.float16                                       |
| bf16  | torch.bfloat16 | numpy.uint16 holding bf16 bit patterns (numpy has    |
|       |                | no bfloat16); ml_dtypes.bfloat16 arrays work too    |

``to_bf16`` / ``from_bf16`` convert float32 arrays to and from that uint16
convention (round to nearest even, as attnd does). Any other dtype (float64,
integers) is a ``TypeError`` naming the argument: convert it first.

Results (out, lse) are allocated as the kind the query came as (numpy in,
numpy out; torch in, torch out, on the query's device), or written into a
caller's buffer (``out=``), which must then be C-contiguous and writable.
torch is never imported here unless a torch tensor is passed in.
"""

from __future__ import annotations

import enum
import math
import sys
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _lib


class DType(enum.IntEnum):
    """Element types on the wire (attnd_dtype)."""
    INVALID = 0
    BF16 = 1
    F16 = 2
    F32 = 3

    @property
    def itemsize(self) -> int:
        """Bytes per element (0 for INVALID)."""
        return {DType.BF16: 2, DType.F16: 2, DType.F32: 4}.get(self, 0)


_NAMES = {
    "bf16": DType.BF16, "bfloat16": DType.BF16,
    "f16": DType.F16, "float16": DType.F16, "half": DType.F16,
    "f32": DType.F32, "float32": DType.F32, "float": DType.F32,
}


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _torch():
    return sys.modules["torch"]


def dtype_of(spec: Any) -> DType:
    """A DType from a DType, a name ("bf16", "float32"...), a numpy dtype or
    a torch dtype. Raises TypeError for anything else."""
    if isinstance(spec, DType):
        return spec
    if isinstance(spec, str):
        if spec.lower() in _NAMES:
            return _NAMES[spec.lower()]
        raise TypeError(f"unknown dtype name {spec!r}; expected bf16, f16 or f32")
    if type(spec).__module__ == "torch":  # torch.dtype
        t = _torch()
        m = {t.float32: DType.F32, t.float16: DType.F16, t.bfloat16: DType.BF16}
        if spec in m:
            return m[spec]
        raise TypeError(f"torch dtype {spec} has no attnd form; use float32, float16 or bfloat16")
    try:
        d = np.dtype(spec)
    except TypeError:
        raise TypeError(f"{spec!r} is not a dtype") from None
    return _numpy_dtype(d, "dtype")


def _numpy_dtype(d: np.dtype, field: str) -> DType:
    if d == np.float32:
        return DType.F32
    if d == np.float16:
        return DType.F16
    if d == np.uint16 or (d.name == "bfloat16" and d.itemsize == 2):
        return DType.BF16
    raise TypeError(f"{field}: numpy dtype {d} has no attnd form; use float32, float16, "
                    "or uint16 holding bf16 bits (attnd.to_bf16)")


class Wire:
    """One argument as libattnd sees it: a dtype, a shape and a pointer into
    memory that ``keep`` keeps alive."""

    __slots__ = ("dtype", "shape", "ptr", "keep", "nbytes")

    def __init__(self, dtype: DType, shape: Tuple[int, ...], ptr: int, keep: Any, nbytes: int):
        self.dtype = dtype
        self.shape = shape
        self.ptr = ptr
        self.keep = keep
        self.nbytes = nbytes

    def fill(self, t: _lib.Tensor, field: str) -> None:
        """Describe this argument in an attnd_tensor."""
        if len(self.shape) > _lib.MAX_DIMS:
            raise ValueError(f"{field}: {len(self.shape)} dims; attnd tensors have at most "
                             f"{_lib.MAX_DIMS}")
        t.dtype = int(self.dtype)
        t.ndim = len(self.shape)
        for i, n in enumerate(self.shape):
            t.shape[i] = n
        t.data = self.ptr or None


# numpy dtype numbers of the wire dtypes (native byte order): the fast path
_NP_WIRE = {np.dtype(np.float32).num: DType.F32, np.dtype(np.float16).num: DType.F16,
            np.dtype(np.uint16).num: DType.BF16}


def as_wire(x: Any, field: str) -> Wire:
    """x (numpy array, torch tensor, or anything numpy.asarray takes) as a
    contiguous host buffer of a wire dtype; copies only when it must."""
    if type(x) is np.ndarray and x.flags.c_contiguous and x.dtype.isnative:
        dt = _NP_WIRE.get(x.dtype.num)
        if dt is not None and x.dtype.kind != "V":
            return Wire(dt, x.shape, x.ctypes.data, x, x.nbytes)
    if _is_torch(x):
        dt = dtype_of(x.dtype)  # TypeError for other dtypes
        if x.device.type != "cpu":
            x = x.detach().to("cpu")
        if not x.is_contiguous():
            x = x.contiguous()
        return Wire(dt, tuple(int(n) for n in x.shape), int(x.data_ptr()), x,
                    x.numel() * x.element_size())
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    dt = _numpy_dtype(a.dtype, field)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return Wire(dt, tuple(int(n) for n in a.shape), int(a.ctypes.data), a, a.nbytes)


def _numpy_for(dt: DType, like: Optional[np.dtype] = None) -> np.dtype:
    if dt == DType.F32:
        return np.dtype(np.float32)
    if dt == DType.F16:
        return np.dtype(np.float16)
    if like is not None and like.name == "bfloat16" and like.itemsize == 2:
        return like  # ml_dtypes.bfloat16 in, the same out
    return np.dtype(np.uint16)


def empty_like_kind(like: Any, shape: Tuple[int, ...], dt: DType):
    """An uninitialized result of `shape` and dtype dt, of the kind (numpy or
    torch) of `like`. torch results live in host memory; the caller moves
    them to `like`'s device."""
    if _is_torch(like):
        t = _torch()
        tdt = {DType.F32: t.float32, DType.F16: t.float16, DType.BF16: t.bfloat16}[dt]
        return t.empty(shape, dtype=tdt)
    like_dt = like.dtype if isinstance(like, np.ndarray) else None
    return np.empty(shape, dtype=_numpy_for(dt, like_dt))


def writable(x: Any, field: str) -> Tuple[int, int, DType]:
    """(pointer, capacity in bytes, dtype) of a caller's result buffer; it
    must be C-contiguous, writable host memory of a wire dtype."""
    if _is_torch(x):
        if x.device.type != "cpu" or not x.is_contiguous():
            raise ValueError(f"{field}: expected a contiguous CPU tensor")
        return int(x.data_ptr()), x.numel() * x.element_size(), dtype_of(x.dtype)
    if not isinstance(x, np.ndarray) or not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError(f"{field}: expected a C-contiguous, writable numpy array")
    return int(x.ctypes.data), x.nbytes, _numpy_dtype(x.dtype, field)


def to_device(result: Any, like: Any) -> Any:
    """Move a torch result to the device of the query it answers."""
    if _is_torch(like) and like.device.type != "cpu":
        return result.to(like.device)
    return result


# ---- bf16 in numpy ------------------------------------------------------------

def to_bf16(x: Union[np.ndarray, Any]) -> np.ndarray:
    """float32 values (any array-like) as uint16 bf16 bit patterns, rounded
    to nearest even (NaN stays NaN), as attnd converts."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = a.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def from_bf16(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns as float32 (exact)."""
    b = np.ascontiguousarray(np.asarray(bits, dtype=np.uint16))
    return (b.astype(np.uint32) << 16).view(np.float32)


def as_float32(x: Any) -> np.ndarray:
    """A result (numpy f32/f16/uint16-bf16 or torch tensor) as a float32
    numpy array, for checking and printing."""
    if _is_torch(x):
        return x.detach().to("cpu").float().numpy()
    a = np.asarray(x)
    if a.dtype == np.uint16:
        return from_bf16(a)
    return a.astype(np.float32)


def prod(shape: Tuple[int, ...]) -> int:
    """The element count of a shape (1 for ())."""
    return int(math.prod(shape))
