"""Security through the binding (issue 15): the Client's TLS, mutual TLS
and token options against a real attnd with --tls-cert and --token-file,
certificates made fresh per test by tests/service/mkcerts.sh (openssl).

A client trusting the server's CA decodes exactly over TLS with its
tenant's figures; one trusting another CA, or speaking plaintext, never
connects; a missing token is UnauthenticatedError; another tenant's
session is NotFoundError and stays as it was; with --tls-client-ca a
client without a certificate never connects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import attnd
from helpers import Seqs

ROOT = Path(__file__).resolve().parents[2]
ALICE = "tok-alice-0123456789abcdef"
BOB = "tok-bob-0123456789abcdef00"


@pytest.fixture
def certs():
    """A directory with mkcerts.sh's files and a token file (alice, bob)."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make certificates")
    d = tempfile.mkdtemp(prefix="attnd-pytest-certs-")
    subprocess.run(["bash", str(ROOT / "tests" / "service" / "mkcerts.sh"), d], check=True)
    tokens = os.path.join(d, "tokens")
    with open(tokens, "w") as f:
        f.write(f"{ALICE} alice\n{BOB} bob\n")
    os.chmod(tokens, 0o600)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def tls_server(start_server, d, *extra):
    return start_server("--model", "tiny-gqa", "--tls-cert", os.path.join(d, "server.pem"),
                        "--tls-key", os.path.join(d, "server.key"),
                        "--token-file", os.path.join(d, "tokens"), *extra)


def test_tls_with_the_servers_ca_and_a_token_decodes_exactly(start_server, connect, rng, certs):
    srv = tls_server(start_server, certs)
    c = connect(srv.target, tls_ca_file=os.path.join(certs, "ca1.pem"), token=ALICE)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(20)
    for layer in range(seqs.m.n_layers):
        seqs.step(layer)
    st = c.stats()
    assert st.stats_scope == "tenant alice"
    assert st.sessions == 2


@pytest.mark.parametrize("ca", ["ca2.pem", None])  # None: plaintext
def test_a_client_without_the_servers_ca_never_connects(start_server, connect, certs, ca):
    srv = tls_server(start_server, certs)
    opts = dict(token=ALICE, connect_timeout_ms=2000)
    if ca:
        opts["tls_ca_file"] = os.path.join(certs, ca)
    with pytest.raises(attnd.UnavailableError):
        connect(srv.target, **opts)


def test_a_missing_token_is_unauthenticated(start_server, connect, certs):
    srv = tls_server(start_server, certs)
    c = connect(srv.target, tls_ca_file=os.path.join(certs, "ca1.pem"))
    assert c.health()  # health needs no token
    with pytest.raises(attnd.UnauthenticatedError):
        c.create_session()


def test_another_tenants_session_is_not_found_and_unchanged(start_server, connect, rng, certs):
    srv = tls_server(start_server, certs)
    ca = os.path.join(certs, "ca1.pem")
    alice = connect(srv.target, tls_ca_file=ca, token=ALICE)
    bob = connect(srv.target, tls_ca_file=ca, token=BOB)
    seqs = Seqs(alice, 1, rng)
    seqs.prefill(10)
    m = seqs.m
    q = np.zeros((1, m.n_q_heads, m.d_k), np.float32)
    with pytest.raises(attnd.NotFoundError):
        bob.attend(0, [seqs.ids[0]], q, new_kv=seqs.make_kv(1), positions=[10])
    with pytest.raises(attnd.NotFoundError):
        bob.close_session(seqs.ids[0])
    # alice's session is as it was: 10 tokens, outputs match the reference
    seqs.step(0)
    assert bob.stats().sessions == 0


def test_mutual_tls_needs_the_client_certificate(start_server, connect, certs):
    srv = tls_server(start_server, certs, "--tls-client-ca", os.path.join(certs, "ca1.pem"))
    ca = os.path.join(certs, "ca1.pem")
    with pytest.raises(attnd.UnavailableError):
        connect(srv.target, tls_ca_file=ca, token=ALICE, connect_timeout_ms=2000)
    c = connect(srv.target, tls_ca_file=ca, token=ALICE,
                tls_cert_file=os.path.join(certs, "client.pem"),
                tls_key_file=os.path.join(certs, "client.key"))
    assert c.stats().stats_scope == "tenant alice"
