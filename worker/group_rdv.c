/* The worker group's rendezvous: how two ranks learn each other's UCX
 * worker address before any UCX traffic, over a plain TCP port that attnd
 * owns (the rank's --group address). The worker room must not call gRPC,
 * and a UCX sockaddr listener (ucp_listener_create) aborts the whole
 * process on 17 garbage bytes in UCX 1.13; this port drops garbage.
 *
 * Protocol (one short TCP connection per rendezvous; all little-endian):
 *   connector -> acceptor  card HELLO  (fixed ATTND__GCARD_HDR bytes, then
 *                                       payload_len bytes: the connector's
 *                                       UCX worker address)
 *   acceptor -> connector  card ANSWER (status 0 and its own address; or a
 *                                       refusal status and its message)
 *   then both close; each side (re)makes its UCX endpoint to the other by
 *   address (group_net.c) and proves it with a UCX HELLO round trip.
 * The fixed header: magic "ATTNDGRP", version, kind, rank, the group's
 * settings (size, mode, page size, model shape and KV dtype: a rank that
 * differs is refused with a message), the sender's token (every UCX
 * message to it must carry it: UCX messages from anyone who did not
 * rendezvous are dropped), a 16-byte random nonce, who the process is
 * (same-host transports, see common/attnd_ucxw.h) and the payload length.
 *
 * With a group secret (issue 15 item 4; --group-secret-file) two bare
 * cards (group_int.h) go first, and the proofs are group_auth.c's:
 *   connector -> acceptor  CHALLENGE (its rank, a nonce)
 *   acceptor -> connector  PROOF     (its rank, a nonce; payload: its proof
 *                                     over both headers)
 *   connector -> acceptor  PROOF     (payload: its own proof) and at once
 *                          HELLO     as above
 *   acceptor -> connector  ANSWER    as above
 * Each side checks the other's proof before it sends anything more: a
 * connector whose acceptor fails closes without its HELLO; an acceptor
 * reads the HELLO only after the connector's proof verified. So the
 * addresses and tokens, the only way onto the UCX data path, go to
 * holders of the secret only; the group's settings too. A rank with a
 * secret refuses a HELLO that comes without the proofs, and one without a
 * secret refuses a CHALLENGE, each with a bare ANSWER whose message says
 * why (logged on both sides, strangers' at most once a second).
 *
 * Never trusting a peer: a connection that does not start with the magic,
 * announces another version or kind, a payload longer than
 * ATTND_UCXW_ADDR_MAX (a PROOF's: other than ATTND__GCARD_MAC), or a rank
 * out of range is closed; so is one whose card comes out of turn, one
 * that has not finished within RDV_TIMEOUT_MS (slow or half-open peers),
 * and at most ATTND__GRDV_MAX_CONNS are open at once (more are closed on
 * accept). All sockets are non-blocking and served by the group's
 * progress thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "group_int.h"

#define RDV_TIMEOUT_MS 2000
#define REFUSED_RETRY_MS 5000

/* ---- the card on the wire ----------------------------------------------------------- */

static unsigned char *put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return p + 4;
}

static unsigned char *put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return p + 8;
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Offsets: magic 0, version 8 (u16), kind 10 (u16), rank 12, size 16,
 * mode 20, page_size 24, n_layers 28, n_q_heads 32, kv_elems 36, kv_dtype
 * 40, status 44, token 48, nonce 56, boot_id 72 (40), pid_ns 112, ipc_ns
 * 120, uid 128, pid 132, shm_ok 136, payload_len 140, net_ns 144, shm_len
 * 152, reserved (zero) 156..160. */
_Static_assert(ATTND__GCARD_HDR == 160, "the card header is 160 bytes");

size_t attnd__gcard_encode(const attnd__gcard *c, const void *payload, unsigned char *out)
{
    unsigned char *p = out;
    memset(out, 0, ATTND__GCARD_HDR);
    memcpy(p, ATTND__GCARD_MAGIC, 8);
    p += 8;
    p[0] = (unsigned char)c->version;
    p[1] = (unsigned char)(c->version >> 8);
    p[2] = (unsigned char)c->kind;
    p[3] = (unsigned char)(c->kind >> 8);
    p += 4;
    p = put32(p, (uint32_t)c->rank);
    p = put32(p, (uint32_t)c->size);
    p = put32(p, c->mode);
    p = put32(p, c->page_size);
    p = put32(p, c->n_layers);
    p = put32(p, c->n_q_heads);
    p = put32(p, c->kv_elems);
    p = put32(p, c->kv_dtype);
    p = put32(p, (uint32_t)c->status);
    p = put64(p, c->token);
    memcpy(p, c->nonce, 16);
    p += 16;
    memcpy(p, c->host.boot_id, sizeof c->host.boot_id);
    p[sizeof c->host.boot_id - 1] = 0;
    p += 40;
    p = put64(p, c->host.pid_ns);
    p = put64(p, c->host.ipc_ns);
    p = put32(p, c->host.uid);
    p = put32(p, (uint32_t)c->host.pid);
    p = put32(p, c->shm_ok);
    p = put32(p, c->payload_len);
    p = put64(p, c->host.net_ns);
    put32(p, c->shm_len);
    if (c->payload_len && payload)
        memcpy(out + ATTND__GCARD_HDR, payload, c->payload_len);
    return ATTND__GCARD_HDR + c->payload_len;
}

int attnd__gcard_decode(const unsigned char *buf, size_t have, attnd__gcard *c)
{
    const unsigned char *p = buf;

    if (memcmp(buf, ATTND__GCARD_MAGIC, have < 8 ? have : 8) != 0)
        return -1; /* not a card: no need to wait for the rest */
    if (have < ATTND__GCARD_HDR)
        return 0;
    memset(c, 0, sizeof *c);
    p += 8;
    c->version = (uint16_t)(p[0] | p[1] << 8);
    c->kind = (uint16_t)(p[2] | p[3] << 8);
    p += 4;
    c->rank = (int32_t)get32(p);
    c->size = (int32_t)get32(p + 4);
    c->mode = get32(p + 8);
    c->page_size = get32(p + 12);
    c->n_layers = get32(p + 16);
    c->n_q_heads = get32(p + 20);
    c->kv_elems = get32(p + 24);
    c->kv_dtype = get32(p + 28);
    c->status = (int32_t)get32(p + 32);
    c->token = get64(p + 36);
    memcpy(c->nonce, p + 44, 16);
    memcpy(c->host.boot_id, p + 60, sizeof c->host.boot_id);
    c->host.boot_id[sizeof c->host.boot_id - 1] = '\0';
    c->host.pid_ns = get64(p + 100);
    c->host.ipc_ns = get64(p + 108);
    c->host.uid = get32(p + 116);
    c->host.pid = (int32_t)get32(p + 120);
    c->shm_ok = get32(p + 124);
    c->payload_len = get32(p + 128);
    c->host.net_ns = get64(p + 132);
    c->shm_len = get32(p + 140);
    if (c->version != ATTND__GCARD_VERSION || c->kind < ATTND__GCARD_HELLO ||
        c->kind > ATTND__GCARD_PROOF || c->payload_len > ATTND_UCXW_ADDR_MAX ||
        c->shm_len > c->payload_len || (c->shm_len && c->kind > ATTND__GCARD_ANSWER) ||
        (c->kind == ATTND__GCARD_CHALLENGE && c->payload_len != 0) ||
        (c->kind == ATTND__GCARD_PROOF && c->payload_len != ATTND__GCARD_MAC) ||
        c->rank < 0 || c->rank >= ATTND_GROUP_MAX_RANKS)
        return -1;
    return 1;
}

/* ---- checks --------------------------------------------------------------------------- */

/* 0 when card c's group settings are ours; else -1 with why in msg. */
static int check_settings(attnd_group *g, const attnd__gcard *c, char *msg, size_t cap)
{
    attnd__gcard mine;
    attnd__gnet_my_card(g, c->kind, &mine);
    if (c->size == mine.size && c->mode == mine.mode && c->page_size == mine.page_size &&
        c->n_layers == mine.n_layers && c->n_q_heads == mine.n_q_heads &&
        c->kv_elems == mine.kv_elems && c->kv_dtype == mine.kv_dtype && c->rank < g->N &&
        c->rank != g->me)
        return 0;
    snprintf(msg, cap,
             "group: rank %d runs size %d, mode %s, page size %d, model %s (kv %s); rank %d "
             "differs (size %d, mode %u, page size %u, or the model)",
             g->me, g->N, attnd_group_mode_name(g->cfg.mode), g->cfg.page_size,
             g->cfg.model.name, attnd_dtype_name(g->cfg.model.kv_dtype), c->rank, c->size,
             c->mode, c->page_size);
    return -1;
}

/* ---- connections ------------------------------------------------------------------------ */

static void conn_close(attnd__grdv_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static attnd__grdv_conn *conn_new(attnd_group *g, int fd, int outgoing, int32_t rank)
{
    for (int i = 0; i < ATTND__GRDV_MAX_CONNS; i++) {
        attnd__grdv_conn *c = &g->rdv[i];
        if (c->fd >= 0)
            continue;
        c->fd = fd;
        c->outgoing = outgoing;
        c->rank = rank;
        c->phase = ATTND__GRDV_OPEN;
        c->sending = c->connected = c->then_close = 0;
        c->have = c->out_len = c->out_sent = 0;
        c->deadline_ms = attnd_clock_ms() + RDV_TIMEOUT_MS;
        return c;
    }
    return NULL;
}

/* Start sending what conn_put_* queued in c->out. */
static void conn_send(attnd__grdv_conn *c, int then_close)
{
    c->out_sent = 0;
    c->sending = 1;
    c->then_close = then_close;
}

/* Queue our card of `kind` for c->rank with our addresses as payload
 * (status 0). */
static void conn_put_card(attnd_group *g, attnd__grdv_conn *c, uint16_t kind)
{
    c->out_len += attnd__gnet_put_card(g, c->rank, kind, c->out + c->out_len);
}

/* 0 when a card's payload holds what look like worker addresses: the
 * sender's, and its peer worker's if it sent one. */
static int addrs_check(const attnd__gcard *card, const unsigned char *payload)
{
    uint32_t main_len = card->payload_len - card->shm_len;
    if (attnd_ucxw_address_check(payload, main_len))
        return -1;
    return card->shm_len ? attnd_ucxw_address_check(payload + main_len, card->shm_len) : 0;
}

/* Queue a bare refusal (status st, payload msg): nothing about us but
 * our rank. */
static void conn_put_refusal(attnd_group *g, attnd__grdv_conn *c, int32_t st, const char *msg)
{
    size_t n = strlen(msg);
    if (n > ATTND_UCXW_ADDR_MAX)
        n = ATTND_UCXW_ADDR_MAX;
    attnd__gcard_bare(ATTND__GCARD_ANSWER, g->me, st, (uint32_t)n, c->out + c->out_len);
    memcpy(c->out + c->out_len + ATTND__GCARD_HDR, msg, n);
    c->out_len += ATTND__GCARD_HDR + n;
}

/* Queue our PROOF as `acceptor` or connector over c->th. 0, or -1. */
static int conn_put_proof(attnd_group *g, attnd__grdv_conn *c, int acceptor)
{
    unsigned char *p = c->out + c->out_len;
    attnd__gcard_bare(ATTND__GCARD_PROOF, g->me, 0, ATTND__GCARD_MAC, p);
    if (acceptor) /* its header is the second half of what is signed */
        memcpy(c->th + ATTND__GCARD_HDR, p, ATTND__GCARD_HDR);
    if (attnd__grdv_mac(g, acceptor, c->th, p + ATTND__GCARD_HDR))
        return -1;
    c->out_len += ATTND__GCARD_HDR + ATTND__GCARD_MAC;
    return 0;
}

/* Log a peer refused for the secret, at most once a second (a stranger
 * may try as often as it likes). */
static void log_refused(attnd_group *g, const char *why, int32_t rank)
{
    int64_t now = attnd_clock_ms();
    if (g->rdv_logged_ms && now - g->rdv_logged_ms < 1000)
        return;
    g->rdv_logged_ms = now;
    attnd_log_error("group", "rank %d: refusing a peer that claims rank %d: %s", g->me, rank,
                    why);
}

void attnd__grdv_connect(attnd_group *g, int32_t r)
{
    struct sockaddr_storage ss;
    socklen_t len;

    for (int i = 0; i < ATTND__GRDV_MAX_CONNS; i++)
        if (g->rdv[i].fd >= 0 && g->rdv[i].outgoing && g->rdv[i].rank == r)
            return; /* under way */
    if (attnd__gaddr_peer(g, r, &ss, &len))
        return; /* not known yet */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) {
        close(fd);
        return;
    }
    attnd__grdv_conn *c = conn_new(g, fd, 1, r);
    if (!c) {
        close(fd);
        return;
    }
    if (g->cfg.has_secret) {
        attnd__gcard_bare(ATTND__GCARD_CHALLENGE, g->me, 0, 0, c->out);
        memcpy(c->th, c->out, ATTND__GCARD_HDR);
        c->out_len = ATTND__GCARD_HDR;
        c->phase = ATTND__GRDV_CHALLENGED;
    } else {
        conn_put_card(g, c, ATTND__GCARD_HELLO);
        c->phase = ATTND__GRDV_TRUSTED;
    }
    conn_send(c, 0);
}

/* The acceptor's side: a whole card arrived on c. 1 to keep c, 0 to
 * close it. */
static int acceptor_got_card(attnd_group *g, attnd__grdv_conn *c, const attnd__gcard *card)
{
    const unsigned char *payload = c->in + ATTND__GCARD_HDR;
    char msg[320];

    switch (c->phase) {
    case ATTND__GRDV_OPEN:
        if (card->kind == ATTND__GCARD_CHALLENGE && (card->rank >= g->N || card->rank == g->me))
            return 0;
        if (card->kind == ATTND__GCARD_CHALLENGE && !g->cfg.has_secret) {
            snprintf(msg, sizeof msg, "rank %d runs without a group secret and rank %d with "
                     "one: give every rank the same --group-secret-file", g->me, card->rank);
            log_refused(g, msg, card->rank);
            conn_put_refusal(g, c, ATTND_ERR_FAILED_PRECONDITION, msg);
            conn_send(c, 1);
            return 1;
        }
        if (card->kind == ATTND__GCARD_CHALLENGE) {
            c->rank = card->rank;
            memcpy(c->th, c->in, ATTND__GCARD_HDR);
            if (conn_put_proof(g, c, 1))
                return 0;
            c->phase = ATTND__GRDV_PROVED;
            conn_send(c, 0);
            return 1;
        }
        if (card->kind != ATTND__GCARD_HELLO)
            return 0;
        if (g->cfg.has_secret) {
            snprintf(msg, sizeof msg, "rank %d needs the group secret (--group-secret-file) and "
                     "got a HELLO without its proof", g->me);
            log_refused(g, msg, card->rank);
            conn_put_refusal(g, c, ATTND_ERR_UNAUTHENTICATED, msg);
            conn_send(c, 1);
            return 1;
        }
        c->rank = card->rank;
        c->phase = ATTND__GRDV_TRUSTED;
        break; /* answer it below */
    case ATTND__GRDV_PROVED:
        if (card->kind != ATTND__GCARD_PROOF || card->rank != c->rank)
            return 0;
        if (!attnd__grdv_mac_ok(g, 0, c->th, payload)) {
            snprintf(msg, sizeof msg, "rank %d: the group secret's proof is wrong (another "
                     "--group-secret-file, or not a rank of this group)", g->me);
            log_refused(g, msg, card->rank);
            conn_put_refusal(g, c, ATTND_ERR_UNAUTHENTICATED, msg);
            conn_send(c, 1);
            return 1;
        }
        c->phase = ATTND__GRDV_TRUSTED;
        c->have = 0; /* its HELLO comes next */
        return 1;
    case ATTND__GRDV_TRUSTED:
        if (card->kind != ATTND__GCARD_HELLO || card->rank != c->rank)
            return 0;
        break;
    default:
        return 0;
    }
    /* a HELLO from a trusted peer */
    c->out_len = 0;
    if (check_settings(g, card, msg, sizeof msg)) {
        attnd_log_error("group", "rank %d: refusing rank %d: %s", g->me, card->rank, msg);
        conn_put_refusal(g, c, ATTND_ERR_FAILED_PRECONDITION, msg);
        conn_send(c, 1);
        return 1;
    }
    if (addrs_check(card, payload))
        return 0;
    attnd__gnet_apply_card(g, card, payload);
    conn_put_card(g, c, ATTND__GCARD_ANSWER);
    conn_send(c, 1);
    return 1;
}

/* The connector's side: a whole card arrived on c. 1 to keep c, 0 to
 * close it. */
static int connector_got_card(attnd_group *g, attnd__grdv_conn *c, const attnd__gcard *card)
{
    const unsigned char *payload = c->in + ATTND__GCARD_HDR;
    char msg[320];

    if (card->rank != c->rank)
        return 0;
    if (card->kind == ATTND__GCARD_ANSWER && card->status != 0) {
        snprintf(msg, sizeof msg, "%.*s", (int)card->payload_len, (const char *)payload);
        attnd_log_error("group", "rank %d: rank %d refused us: %s", g->me, c->rank, msg);
        g->peers[c->rank].next_try_ms = attnd_clock_ms() + REFUSED_RETRY_MS;
        return 0;
    }
    if (c->phase == ATTND__GRDV_CHALLENGED) {
        if (card->kind != ATTND__GCARD_PROOF)
            return 0;
        memcpy(c->th + ATTND__GCARD_HDR, c->in, ATTND__GCARD_HDR);
        if (!attnd__grdv_mac_ok(g, 1, c->th, payload)) {
            attnd_log_error("group", "rank %d: rank %d failed the group secret's proof "
                            "(another --group-secret-file, or not a rank of this group): not "
                            "joining it", g->me, c->rank);
            g->peers[c->rank].next_try_ms = attnd_clock_ms() + REFUSED_RETRY_MS;
            return 0;
        }
        c->out_len = 0;
        if (conn_put_proof(g, c, 0))
            return 0;
        conn_put_card(g, c, ATTND__GCARD_HELLO);
        c->phase = ATTND__GRDV_TRUSTED;
        conn_send(c, 0);
        return 1;
    }
    /* our HELLO's answer */
    if (card->kind != ATTND__GCARD_ANSWER || c->phase != ATTND__GRDV_TRUSTED)
        return 0;
    if (check_settings(g, card, msg, sizeof msg)) {
        attnd_log_error("group", "rank %d: rank %d differs: %s", g->me, c->rank, msg);
        g->peers[c->rank].next_try_ms = attnd_clock_ms() + REFUSED_RETRY_MS;
        return 0;
    }
    if (addrs_check(card, payload))
        return 0;
    attnd__gnet_apply_card(g, card, payload);
    return 0;
}

/* Advance c; 1 when it moved, -1 when it is done or broken (close it). */
static int conn_step(attnd_group *g, attnd__grdv_conn *c)
{
    if (c->sending) {
        if (c->outgoing && !c->connected) { /* connected yet? */
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            int e = 0;
            socklen_t el = sizeof e;
            if (poll(&p, 1, 0) <= 0)
                return 0;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0 || e != 0)
                return -1; /* the peer is not up (yet) */
            c->connected = 1;
        }
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        c->out_sent += (size_t)n;
        if (c->out_sent < c->out_len)
            return 1;
        if (c->then_close)
            return -1; /* said all: done */
        c->sending = 0;
        c->have = 0;
        c->out_len = 0;
        return 1;
    }
    attnd__gcard card;
    int k = 0;
    size_t want = ATTND__GCARD_HDR;
    if (c->have >= ATTND__GCARD_HDR && (k = attnd__gcard_decode(c->in, c->have, &card)) == 1)
        want += card.payload_len;
    ssize_t n = recv(c->fd, c->in + c->have, want - c->have, 0);
    if (n == 0)
        return -1; /* closed before a whole card */
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    c->have += (size_t)n;
    if ((k = attnd__gcard_decode(c->in, c->have, &card)) < 0)
        return -1; /* garbage */
    if (k == 0 || c->have < ATTND__GCARD_HDR + card.payload_len)
        return 1;
    int keep = c->outgoing ? connector_got_card(g, c, &card) : acceptor_got_card(g, c, &card);
    return keep ? 1 : -1;
}

int attnd__grdv_tend(attnd_group *g)
{
    int busy = 0;
    int64_t now = attnd_clock_ms();
    int fd;

    if (g->rdv_fd >= 0)
        while ((fd = accept4(g->rdv_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
            if (!conn_new(g, fd, 0, -1))
                close(fd); /* too many at once */
            busy = 1;
        }
    for (int i = 0; i < ATTND__GRDV_MAX_CONNS; i++) {
        attnd__grdv_conn *c = &g->rdv[i];
        if (c->fd < 0)
            continue;
        if (now > c->deadline_ms) { /* slow, silent or half-open */
            conn_close(c);
            continue;
        }
        int k;
        while ((k = conn_step(g, c)) > 0)
            busy = 1;
        if (k < 0) {
            conn_close(c);
            busy = 1;
        }
    }
    return busy;
}

int attnd__grdv_fds(attnd_group *g, struct pollfd *fds, int cap)
{
    int n = 0;
    if (g->rdv_fd >= 0 && n < cap)
        fds[n++] = (struct pollfd){.fd = g->rdv_fd, .events = POLLIN};
    for (int i = 0; g->rdv && i < ATTND__GRDV_MAX_CONNS && n < cap; i++)
        if (g->rdv[i].fd >= 0)
            fds[n++] = (struct pollfd){.fd = g->rdv[i].fd,
                                       .events = g->rdv[i].sending ? POLLOUT : POLLIN};
    return n;
}

attnd_status attnd__grdv_listen(attnd_group *g, attnd_error *err)
{
    char host[ATTND_GROUP_ADDR_MAX];
    struct sockaddr_storage ss;
    socklen_t len;
    int port, one = 1;

    if (attnd__gaddr_split(g->cfg.addrs[g->me], host, sizeof host, &port) ||
        attnd__gaddr_resolve(host, port, &ss, &len))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--group: entry %d \"%s\" is not a HOST:PORT this host resolves",
                               g->me, g->cfg.addrs[g->me]);
    if (!(g->rdv = calloc(ATTND__GRDV_MAX_CONNS, sizeof *g->rdv)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
    for (int i = 0; i < ATTND__GRDV_MAX_CONNS; i++)
        g->rdv[i].fd = -1;
    g->rdv_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (g->rdv_fd < 0 ||
        setsockopt(g->rdv_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(g->rdv_fd, (struct sockaddr *)&ss, len) != 0 || listen(g->rdv_fd, 16) != 0)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "--group: rank %d cannot listen on %s: %s",
                               g->me, g->cfg.addrs[g->me], strerror(errno));
    struct sockaddr_storage b;
    socklen_t bl = sizeof b;
    if (getsockname(g->rdv_fd, (struct sockaddr *)&b, &bl) != 0)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "--group: getsockname: %s",
                               strerror(errno));
    g->port = ntohs(b.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&b)->sin6_port
                                            : ((struct sockaddr_in *)&b)->sin_port);
    return ATTND_OK;
}

void attnd__grdv_close(attnd_group *g)
{
    for (int i = 0; g->rdv && i < ATTND__GRDV_MAX_CONNS; i++)
        conn_close(&g->rdv[i]);
    free(g->rdv);
    g->rdv = NULL;
    if (g->rdv_fd >= 0)
        close(g->rdv_fd);
    g->rdv_fd = -1;
}
