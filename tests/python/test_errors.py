"""Errors through the binding: each bad request is the Error subclass of
its gRPC code, whose message names the offending field; a failed call
changes nothing; misuse that never reaches libattnd is a plain Python
exception."""

from __future__ import annotations

import numpy as np
import pytest

import attnd
from helpers import Seqs, rand


@pytest.fixture
def gqa(start_server, connect, rng):
    """A tiny-gqa server and two sessions with 10 tokens in every layer."""
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(10)
    return seqs


def expect(exc_type, code, field, fn, *args, **kw):
    with pytest.raises(exc_type) as e:
        fn(*args, **kw)
    err = e.value
    assert isinstance(err, attnd.Error)
    assert err.code is code, f"{err.code.name}: {err.message}"
    assert field in err.message, f"message does not name {field!r}: {err.message}"
    return err


@pytest.mark.parametrize("shape,field", [
    ((2, 3, 32), "q.shape[1]"),          # heads
    ((2, 8, 31), "q.shape[2]"),          # head_dim
    ((3, 8, 32), "q.shape[0]"),          # batch vs sessions
    ((2, 8), "q.shape"),                 # rank
    ((2, 65, 8, 32), "q.shape[1]"),      # too many query tokens
])
def test_a_bad_query_shape_is_invalid_argument_naming_the_field(gqa, shape, field):
    expect(attnd.InvalidArgumentError, attnd.StatusCode.INVALID_ARGUMENT, field,
           gqa.c.attend, 0, gqa.sessions, np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape,field", [
    ((2, 2, 2, 31), "new_kv.shape"),
    ((1, 2, 2, 32), "new_kv.shape[0]"),
    ((2, 3, 2, 2, 32), "new_kv.shape"),  # S = 3 entries for a 1-token query
])
def test_a_bad_new_kv_shape_is_invalid_argument_naming_the_field(gqa, shape, field):
    expect(attnd.InvalidArgumentError, attnd.StatusCode.INVALID_ARGUMENT, field,
           gqa.c.attend, 0, gqa.sessions, gqa.make_q(2), new_kv=np.zeros(shape, np.float32),
           positions=[10, 10])


def test_an_unknown_session_is_not_found(gqa):
    expect(attnd.NotFoundError, attnd.StatusCode.NOT_FOUND, "session",
           gqa.c.attend, 0, [bytes(16)], gqa.make_q(1))
    expect(attnd.NotFoundError, attnd.StatusCode.NOT_FOUND, "session",
           gqa.c.close_session, bytes(range(16)))


def test_a_closed_session_is_not_found(gqa):
    s = gqa.sessions[1]
    s.close()
    s.close()  # idempotent
    expect(attnd.NotFoundError, attnd.StatusCode.NOT_FOUND, "session",
           gqa.c.attend, 0, [s], gqa.make_q(1))


def test_a_layer_past_the_model_is_out_of_range(gqa):
    expect(attnd.OutOfRangeError, attnd.StatusCode.OUT_OF_RANGE, "layer",
           gqa.c.attend, 3, gqa.sessions, gqa.make_q(2))
    expect(attnd.OutOfRangeError, attnd.StatusCode.OUT_OF_RANGE, "layer",
           gqa.sessions[0].append_kv, 7, rand(gqa.rng, (1, 2, 2, 32)), start=10)


def test_new_kv_at_the_wrong_position_is_failed_precondition_and_changes_nothing(gqa):
    q, kv = gqa.make_q(2), gqa.make_kv(2)
    expect(attnd.FailedPreconditionError, attnd.StatusCode.FAILED_PRECONDITION, "position",
           gqa.c.attend, 0, gqa.sessions, q, new_kv=kv, positions=[10, 11])
    # neither session got the entry: both still take it at 10
    assert gqa.step(0) <= 1e-5


def test_an_append_at_the_wrong_start_is_failed_precondition(gqa):
    expect(attnd.FailedPreconditionError, attnd.StatusCode.FAILED_PRECONDITION, "start",
           gqa.sessions[0].append_kv, 0, rand(gqa.rng, (2, 2, 2, 32)), start=3)


def test_a_duplicate_session_in_a_batch_is_invalid_argument(gqa):
    s = gqa.sessions[0]
    expect(attnd.InvalidArgumentError, attnd.StatusCode.INVALID_ARGUMENT, "session_ids[1]",
           gqa.c.attend, 0, [s, s], gqa.make_q(2))


def test_a_failed_call_leaves_the_other_sessions_exact(gqa):
    bad = np.zeros((2, 8, 31), np.float32)
    with pytest.raises(attnd.InvalidArgumentError):
        gqa.c.attend(1, gqa.sessions, bad, new_kv=gqa.make_kv(2), positions=[10, 10])
    for layer in range(3):
        gqa.step(layer)


def test_a_full_kv_pool_is_resource_exhausted(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa", "--kv-memory", "256Ki").target)
    with c.session() as s:
        kv = rand(rng, (64, 2, 2, 32))
        err = expect(attnd.ResourceExhaustedError, attnd.StatusCode.RESOURCE_EXHAUSTED, "",
                     c.append_kv, [(s, 0, 64 * i, kv) for i in range(64)])
        assert err.applied == 0  # all or nothing: the pool is as it was
        assert c.stats().pages_used == 0


def test_a_full_session_table_is_resource_exhausted(start_server, connect):
    c = connect(start_server("--model", "tiny-gqa", "--max-sessions", "2").target)
    with c.session(), c.session():
        expect(attnd.ResourceExhaustedError, attnd.StatusCode.RESOURCE_EXHAUSTED, "session",
               c.create_session)
    with c.session():  # the two closed above made room
        pass


def test_nobody_listening_is_unavailable(start_server):
    srv = start_server("--model", "tiny-gqa")
    target = srv.target
    assert srv.stop() == 0
    with pytest.raises(attnd.UnavailableError) as e:
        attnd.Client(target, connect_timeout_ms=300)
    assert e.value.code is attnd.StatusCode.UNAVAILABLE


def test_a_closed_client_refuses_calls_with_value_error(start_server):
    c = attnd.Client(start_server("--model", "tiny-gqa").target)
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(ValueError, match="closed"):
        c.health()
    with pytest.raises(ValueError, match="closed"):
        c.attend_async(0, [bytes(16)], np.zeros((1, 8, 32), np.float32))


def test_session_ids_of_the_wrong_length_are_value_errors(gqa):
    with pytest.raises(ValueError, match="16 bytes"):
        gqa.c.attend(0, [b"short"], gqa.make_q(1))
    with pytest.raises(ValueError, match="positions"):
        gqa.c.attend(0, gqa.sessions, gqa.make_q(2), new_kv=gqa.make_kv(2), positions=[10])


def test_error_codes_are_the_grpc_numbers():
    assert [c.value for c in attnd.StatusCode][:4] == [0, 1, 2, 3]
    e = attnd.errors.make_error(-5, "session_id: no such session")
    assert type(e) is attnd.NotFoundError and e.code == 5 and str(e).startswith("NOT_FOUND")
    odd = attnd.errors.make_error(-99, "x")
    assert type(odd) is attnd.UnknownError and "-99" in odd.message
