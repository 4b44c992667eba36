"""Sparse attention from Python: policies, policy tables, given and chosen
page (or token) lists (worker/SPARSE.md; client.h "sparse attention").

``Policy`` is an attnd_sparse_policy: ``full``, ``streaming`` (the pages of
the first ``sink`` and the last ``window`` tokens), ``topk-pages`` (Quest:
the ``topk_pages`` or ``topk_fraction`` of the pages whose key bounds score
best, with the sink pages and the newest page), ``given-pages`` /
``given-tokens`` (the indices each Attend names). ``PolicyRule`` overrides
the session's default for layers [layer_begin, layer_end) and, GQA only,
KV heads [head_begin, head_end) (0, 0: all); later rules win. Both become
the C structures here (``rules_array``); the server checks their values and
names the field it refuses (``policy.window``, ``policy_table[2].head_end``).

``Selection`` is a set of index lists, ``groups`` per session (1: every
head; GQA: one per KV head), list k = i * groups + g being
``idx[indptr[k]:indptr[k + 1]]``, ascending. An Attend with
``return_pages=True`` returns one (what each (session, group) attended),
and ``given=`` takes one as it is: TidalDecode's reuse of one layer's
selection on the next is ``given=sel``. ``given=`` also takes plain nested
lists or integer arrays (``as_selection``).

``SparseRequest`` is the attnd_sparse_args of one call and the buffers it
points at. The chosen lists are written into buffers sized before the call:
from ``positions`` (each session's layer holds positions[i] + S tokens after
the append, so no list holds more pages than that makes, or more tokens
when a given-tokens layer may be in the batch: a session's policy says so,
or a session named by id alone, whose policy is not known here), or from
``chosen_capacity`` (entries of all lists together). For the synchronous
forms (Client.attend, Stream.attend) the buffers are the calling thread's,
kept and grown across calls, and the reply is copied out of them at its
real size; an async call (Client.attend_async) has buffers of its own
(``own_buffers``), since several may be in flight on one thread, and its
Call hands them out as the Selection at the wait.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import threading
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lib

_U32_MAX = (1 << 32) - 1


class PolicyKind(enum.IntEnum):
    """attnd_sparse_policy.kind (ATTND_SPARSE_*; attnd.v1 PolicyKind)."""
    FULL = 0
    STREAMING = 1
    TOPK_PAGES = 2
    GIVEN_PAGES = 3
    GIVEN_TOKENS = 4


@dataclasses.dataclass(frozen=True)
class Policy:
    """A sparse attention policy (attnd_sparse_policy); build one with the
    class methods (``Policy.streaming(window=256, sink=16)``) or
    ``Policy.parse("topk-pages,fraction=0.125,sink=64")`` (attnd-bench's
    ``--policy`` syntax). The server checks the values (window >= 64,
    topk_fraction in (0, 1], ...) and names the field it refuses."""
    kind: PolicyKind = PolicyKind.FULL
    sink: int = 0
    window: int = 0
    topk_pages: int = 0
    topk_fraction: float = 0.0

    @classmethod
    def full(cls) -> "Policy":
        """Every token (the default)."""
        return cls(PolicyKind.FULL)

    @classmethod
    def streaming(cls, window: int, sink: int = 0) -> "Policy":
        """The pages of the first `sink` and the last `window` tokens."""
        return cls(PolicyKind.STREAMING, sink=sink, window=window)

    @classmethod
    def topk(cls, k: Optional[int] = None, *, fraction: Optional[float] = None,
             sink: int = 0) -> "Policy":
        """topk-pages: the best `k` pages, or ceil(fraction x pages), the
        sink pages and the newest pages included in the budget."""
        if (k is None) == (fraction is None):
            raise ValueError("Policy.topk: give k or fraction (one of them)")
        return cls(PolicyKind.TOPK_PAGES, sink=sink, topk_pages=int(k or 0),
                   topk_fraction=float(fraction or 0.0))

    @classmethod
    def given_pages(cls) -> "Policy":
        """The logical pages each Attend names (given=), and the newest."""
        return cls(PolicyKind.GIVEN_PAGES)

    @classmethod
    def given_tokens(cls) -> "Policy":
        """The token positions each Attend names (given=), and the newest."""
        return cls(PolicyKind.GIVEN_TOKENS)

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """"full", "streaming,window=W[,sink=N]", "topk-pages,topk=K[,sink=N]",
        "topk-pages,fraction=F[,sink=N]", "given-pages", "given-tokens"."""
        name, *params = [p.strip() for p in text.split(",")]
        try:
            kind = PolicyKind[name.upper().replace("-", "_")]
        except KeyError:
            raise ValueError(f"policy: unknown kind {name!r} (full, streaming, topk-pages, "
                             f"given-pages, given-tokens)") from None
        vals: dict = {}
        keys = {"sink": "sink", "window": "window", "topk": "topk_pages",
                "fraction": "topk_fraction"}
        for p in params:
            k, _, v = p.partition("=")
            if k not in keys or not v:
                raise ValueError(f"policy: unknown parameter {p!r} in {text!r} "
                                 f"(sink=, window=, topk=, fraction=)")
            vals[keys[k]] = float(v) if k == "fraction" else int(v)
        return cls(kind, **vals)


PolicyLike = Union[Policy, str]


@dataclasses.dataclass(frozen=True)
class PolicyRule:
    """One row of a policy table (attnd_sparse_rule): `policy` for layers
    [layer_begin, layer_end) and, GQA only, KV heads [head_begin, head_end)
    (0, 0: every head; MLA rules name no heads)."""
    layer_begin: int
    layer_end: int
    policy: PolicyLike
    head_begin: int = 0
    head_end: int = 0


def _u32(v: Any, field: str) -> int:
    x = int(v)
    if not 0 <= x <= _U32_MAX:
        raise ValueError(f"{field}: expected 0 .. {_U32_MAX}, got {x}")
    return x


def as_policy(p: PolicyLike, field: str = "policy") -> Policy:
    """A Policy from itself or its text (Policy.parse)."""
    if isinstance(p, str):
        return Policy.parse(p)
    if not isinstance(p, Policy):
        raise TypeError(f"{field}: expected an attnd.Policy or its text, got {type(p).__name__}")
    return p


def fill_policy(dst: _lib.SparsePolicy, p: PolicyLike, field: str) -> None:
    """Write policy p into the C structure; out-of-range integers are a
    ValueError naming field.member (ctypes would wrap them silently)."""
    p = as_policy(p, field)
    try:
        dst.kind = int(PolicyKind(int(p.kind)))
    except ValueError:
        raise ValueError(f"{field}.kind: expected one of {[k.name for k in PolicyKind]}, "
                         f"got {p.kind!r}") from None
    dst.sink = _u32(p.sink, f"{field}.sink")
    dst.window = _u32(p.window, f"{field}.window")
    dst.topk_pages = _u32(p.topk_pages, f"{field}.topk_pages")
    dst.topk_fraction = float(p.topk_fraction)


def rules_array(table: Optional[Sequence[Union[PolicyRule, tuple]]]) -> Tuple[Any, int]:
    """(a ctypes array of attnd_sparse_rule, n) for a policy table: rules,
    or tuples (layer_begin, layer_end, policy[, head_begin, head_end])."""
    rules = [r if isinstance(r, PolicyRule) else PolicyRule(*r) for r in (table or ())]
    arr = (_lib.SparseRule * max(len(rules), 1))()
    for i, r in enumerate(rules):
        f = f"policy_table[{i}]"
        arr[i].layer_begin = _u32(r.layer_begin, f"{f}.layer_begin")
        arr[i].layer_end = _u32(r.layer_end, f"{f}.layer_end")
        arr[i].head_begin = _u32(r.head_begin, f"{f}.head_begin")
        arr[i].head_end = _u32(r.head_end, f"{f}.head_end")
        fill_policy(arr[i].policy, r.policy, f"{f}.policy")
    return arr, len(rules)


@dataclasses.dataclass(frozen=True)
class SessionPolicy:
    """What a session was created with: its default policy (None: full)
    and its policy table (PolicyRule rows)."""
    policy: Optional[PolicyLike] = None
    table: Tuple[PolicyRule, ...] = ()

    @classmethod
    def of(cls, policy: Optional[PolicyLike],
           table: Optional[Sequence[Union[PolicyRule, tuple]]]) -> "SessionPolicy":
        return cls(policy, tuple(r if isinstance(r, PolicyRule) else PolicyRule(*r)
                                 for r in (table or ())))

    def may_give_tokens(self, layer: int) -> bool:
        """Whether some head of `layer` may be given-tokens (then an Attend
        reports token lists, not pages)."""
        pols = [self.policy] + [r.policy for r in self.table
                                if int(r.layer_begin) <= layer < int(r.layer_end)]
        return any(p is not None and as_policy(p).kind == PolicyKind.GIVEN_TOKENS for p in pols)


def session_policy(sp: SessionPolicy) -> Tuple[Any, Any, int]:
    """(policy, rules, n_rules) as attnd_client_create_session_policy takes
    them: a pointer to an attnd_sparse_policy or None, the rules array or
    None, their count."""
    pol = None
    if sp.policy is not None:
        pol = _lib.SparsePolicy()
        fill_policy(pol, sp.policy, "policy")
    rules, n = rules_array(sp.table)
    return (ctypes.pointer(pol) if pol is not None else None), (rules if n else None), n


def _reports_tokens(sessions: Any, layer: int) -> bool:
    """Whether an Attend of `layer` over `sessions` may report token lists:
    some session's policy has given-tokens there, or a session given by id
    alone (its policy unknown here)."""
    if isinstance(sessions, (bytes, bytearray)) or hasattr(sessions, "id"):
        sessions = [sessions]
    for s in sessions:
        sp = getattr(s, "sparse_policy", None)
        if sp is None or sp.may_give_tokens(layer):
            return True
    return False


_scratch = threading.local()


def _chosen_buffers(n_ip: int, n_ch: int) -> Tuple[np.ndarray, np.ndarray]:
    """This thread's buffers for the chosen lists, grown to at least these
    sizes (a sparse Attend is synchronous: one call per thread at a time;
    results are copied out of them)."""
    ip, ch = getattr(_scratch, "ip", None), getattr(_scratch, "ch", None)
    if ip is None or len(ip) < n_ip:
        ip = _scratch.ip = np.empty(max(n_ip, 2 * (0 if ip is None else len(ip))), np.uint32)
    if ch is None or len(ch) < n_ch:
        ch = _scratch.ch = np.empty(max(n_ch, 2 * (0 if ch is None else len(ch))), np.uint64)
    return ip, ch


class Selection:
    """Index lists per (session, group): ``groups`` lists per session, list
    k = i * groups + g is ``idx[indptr[k]:indptr[k + 1]]`` (numpy uint32
    indptr, uint64 idx), ascending logical pages (page j holds tokens
    [j * page_size, (j + 1) * page_size)), or token positions when
    ``tokens``. Pass it as ``given=`` to the next layer as it is."""

    __slots__ = ("groups", "indptr", "idx", "tokens")

    def __init__(self, groups: int, indptr: Any, idx: Any, tokens: bool = False):
        self.groups = int(groups)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.uint32)
        self.idx = np.ascontiguousarray(idx, dtype=np.uint64)
        self.tokens = bool(tokens)
        if self.groups < 1 or (len(self.indptr) - 1) % self.groups:
            raise ValueError(f"given.indptr: {len(self.indptr)} entries is not "
                             f"sessions x {self.groups} groups + 1")

    @property
    def n_seqs(self) -> int:
        return (len(self.indptr) - 1) // self.groups

    def list(self, i: int, g: int = 0) -> np.ndarray:
        """Session i's list of group g (a view)."""
        k = i * self.groups + g
        return self.idx[self.indptr[k]:self.indptr[k + 1]]

    def lists(self) -> List[List[np.ndarray]]:
        """Per session, its groups' lists."""
        return [[self.list(i, g) for g in range(self.groups)] for i in range(self.n_seqs)]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Selection) and self.groups == other.groups
                and self.tokens == other.tokens and np.array_equal(self.indptr, other.indptr)
                and np.array_equal(self.idx, other.idx))

    def __repr__(self) -> str:
        unit = "tokens" if self.tokens else "pages"
        return (f"<attnd.Selection {self.n_seqs} sessions x {self.groups} groups, "
                f"{len(self.idx)} {unit}>")


def _index_list(x: Any, field: str) -> np.ndarray:
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros(0, np.uint64)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise TypeError(f"{field}: expected a 1-D list of integers, got "
                        f"{a.ndim}-D {a.dtype}")
    if a.dtype.kind == "i" and a.min() < 0:
        raise ValueError(f"{field}: negative index {int(a.min())}")
    return a.astype(np.uint64, copy=False)


def _is_one_list(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim <= 1
    seq = list(x)
    return not seq or np.ndim(seq[0]) == 0


def as_selection(given: Any, n_seqs: int) -> Selection:
    """``given=`` as a Selection: a Selection (its sessions must be the
    call's), an integer array [n, k] (one list per session) or [n, G, k],
    or a sequence of n entries, each a list of indices (one group) or a
    list of G such lists (one per KV head)."""
    if isinstance(given, Selection):
        sel = given
    else:
        per = list(given)
        lists: List[List[np.ndarray]] = []
        for i, e in enumerate(per):
            if _is_one_list(e):
                lists.append([_index_list(e, f"given[{i}]")])
            else:
                lists.append([_index_list(x, f"given[{i}][{g}]") for g, x in enumerate(e)])
        groups = {len(x) for x in lists}
        if len(groups) > 1:
            raise ValueError(f"given: sessions have different numbers of lists {sorted(groups)}")
        g = groups.pop() if groups else 1
        flat = [a for x in lists for a in x]
        indptr = np.zeros(len(flat) + 1, np.uint64)
        np.cumsum([len(a) for a in flat], out=indptr[1:])
        idx = np.concatenate(flat) if flat else np.zeros(0, np.uint64)
        sel = Selection(max(g, 1), indptr, idx)
    if sel.n_seqs != n_seqs:
        raise ValueError(f"given: lists for {sel.n_seqs} sessions, the call has {n_seqs}")
    return sel


class SparseRequest:
    """The attnd_sparse_args of one Attend and the arrays it points at."""

    __slots__ = ("args", "_keep", "_ip", "_ch")

    def __init__(self, model: Any, layer: int, sessions: Any, n_seqs: int, q_tokens: int,
                 given: Any, return_pages: bool, positions: Optional[Sequence[int]],
                 appends: bool, chosen_capacity: Optional[int], own_buffers: bool = False):
        s = _lib.SparseArgs()
        keep: list = []
        if given is not None:
            sel = as_selection(given, n_seqs)
            keep.append(sel)
            s.given_groups = sel.groups
            s.given_indptr = sel.indptr.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
            s.given_idx = sel.idx.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64))
            s.n_given_idx = len(sel.idx)
        self._ip = self._ch = None
        if return_pages:
            groups = max(int(model.n_kv_heads), 1)
            if chosen_capacity is not None:
                cap = int(chosen_capacity)
                if cap < 0:
                    raise ValueError(f"chosen_capacity: expected >= 0, got {cap}")
            elif positions is not None:
                # a list holds at most every page (token, in a token list)
                # of its layer after the append
                add = q_tokens if appends else 0
                ps = 1 if _reports_tokens(sessions, int(layer)) else max(int(model.page_size), 1)
                cap = groups * sum(-(-(int(p) + add) // ps) for p in positions)
            else:
                raise ValueError("chosen_capacity: return_pages needs positions= (each "
                                 "session's length bounds its lists) or chosen_capacity= "
                                 "(entries of all lists together)")
            if own_buffers:  # an async call's: written at its wait, whatever runs between
                self._ip = np.empty(n_seqs * groups + 1, np.uint32)
                self._ch = np.empty(max(cap, 1), np.uint64)
            else:
                self._ip, self._ch = _chosen_buffers(n_seqs * groups + 1, max(cap, 1))
            s.return_pages = 1
            s.chosen_indptr = self._ip.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
            s.chosen_indptr_capacity = n_seqs * groups + 1
            s.chosen = self._ch.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64))
            s.chosen_capacity = cap
        self.args = s
        self._keep = keep

    def chosen(self) -> Selection:
        """What the call attended, once it succeeded with return_pages."""
        s = self.args
        assert self._ip is not None and self._ch is not None
        return Selection(s.chosen_groups, self._ip[:s.n_chosen_lists + 1].copy(),
                         self._ch[:s.n_chosen].copy(), bool(s.chosen_tokens))

    def results(self, res: Any) -> Any:
        """A call's value (out, or (out, lse)) with the Selection appended
        when it asked for return_pages."""
        if not self.args.return_pages:
            return res
        return (*res, self.chosen()) if isinstance(res, tuple) else (res, self.chosen())


def sparse_request(client: Any, layer: int, sessions: Any, q: Any, n_seqs: int, given: Any,
                   return_pages: bool, positions: Optional[Sequence[int]], appends: bool,
                   chosen_capacity: Optional[int], own_buffers: bool = False
                   ) -> Optional[SparseRequest]:
    """The SparseRequest of an Attend, or None when it has no sparse
    arguments (then the plain C call is made)."""
    if given is None and not return_pages:
        return None
    shape = getattr(q, "shape", ())
    return SparseRequest(client.model, layer, sessions, n_seqs,
                         int(shape[1]) if len(shape) == 4 else 1, given, return_pages,
                         positions, appends, chosen_capacity, own_buffers)
