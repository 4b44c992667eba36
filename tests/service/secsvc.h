/* The fixture of the security suites (issue 15): certificates made by the
 * test with openssl (mkcerts.sh), a token file, attnd started with any
 * flags, TLS channels, and raw gRPC calls that carry a bearer token.
 * Header-only, on top of svc_server.h (its tiny-mla messages and float64
 * reference). */
#ifndef ATTND_SECSVC_H
#define ATTND_SECSVC_H

#include <fcntl.h>
#include <sys/stat.h>

#include "svc_server.h"

#ifndef ATTND_MKCERTS
#error "ATTND_MKCERTS must name tests/service/mkcerts.sh"
#endif

#define ALICE_TOKEN "alice-0123456789abcdef"
#define BOB_TOKEN "bob-0123456789abcdef01"
#define OPS_TOKEN "ops-0123456789abcdef012"

static char sec_dir[256];

/* A fresh directory with the certificates and a token file: alice, bob
 * (at most 2 sessions), ops (admin), and alice's client certificate. */
static inline void sec_setup(void)
{
    char cmd[512];
    snprintf(sec_dir, sizeof sec_dir, "/tmp/attnd-sec-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(sec_dir));
    snprintf(cmd, sizeof cmd, "%s %s", ATTND_MKCERTS, sec_dir);
    ck_assert_msg(system(cmd) == 0, "mkcerts.sh failed (is openssl installed?)");
    setup();
}

static inline void sec_teardown(void)
{
    char cmd[512];
    teardown();
    snprintf(cmd, sizeof cmd, "rm -rf %s", sec_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", sec_dir);
}

/* sec_dir/name */
static inline const char *sec_path(const char *name)
{
    static char buf[8][320];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", sec_dir, name);
    return p;
}

static inline void sec_write(const char *name, const char *text)
{
    FILE *f = fopen(sec_path(name), "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    chmod(sec_path(name), 0600);
}

static inline void sec_tokens_default(void)
{
    sec_write("tokens", "# tenants of the tests\n"
                        ALICE_TOKEN " alice\n"
                        BOB_TOKEN " bob sessions=2\n"
                        OPS_TOKEN " ops admin\n"
                        "cert:client-a alice\n");
}

/* The PEM contents of sec_dir/name (malloc'd). */
static inline char *sec_read(const char *name)
{
    FILE *f = fopen(sec_path(name), "r");
    ck_assert_ptr_nonnull(f);
    char *b = calloc(1, 1 << 16);
    size_t n = fread(b, 1, (1 << 16) - 1, f);
    b[n] = '\0';
    fclose(f);
    return b;
}

/* Start attnd (tiny-mla, ephemeral port) with extra flags (NULL-ended);
 * stderr to sec_dir/stderr. ch is left NULL: the test makes its own. */
static inline void sec_boot(const char *const *extra)
{
    const char *args[48] = {"--listen", "127.0.0.1:0", "--model", "tiny-mla", "--kv-memory",
                            "64M", "--threads", "2", "--shutdown-grace-ms", "60000"};
    int n = 10;
    for (; extra && *extra && n < 47; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    int err_fd = open(sec_path("stderr"), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ck_assert_int_ge(err_fd, 0);
    int saved = dup(STDERR_FILENO);
    dup2(err_fd, STDERR_FILENO); /* the child inherits it */
    int rc = rg_spawn(&srv, ATTND_BIN, args);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(err_fd);
    ck_assert_int_eq(rc, 0);
    ck_assert_msg(rg_read_port(&srv) == 0, "no listening line from attnd");
}

/* Whether attnd's stderr holds `what` (polled up to the hang guard). */
static inline int sec_stderr_has(const char *what)
{
    int64_t end = rg_now_ms() + RG_WAIT_MS;
    for (;;) {
        char *s = sec_read("stderr");
        int has = strstr(s, what) != NULL;
        free(s);
        if (has || rg_now_ms() > end)
            return has;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* stop_cleanly for a server whose stderr went to sec_dir/stderr: when it
 * does not exit 0, that file (a sanitizer's report, the server's last
 * lines) goes to the test's stderr first, which CI prints with the
 * failure. */
static inline void sec_stop_cleanly(void)
{
    int status = stop_status();
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char *log = sec_read("stderr");
        fprintf(stderr, "---- attnd's stderr ----\n%s---- end ----\n", log);
        free(log);
    }
    assert_exited_cleanly(status);
}

/* A TLS channel trusting ca (NULL: gRPC's default roots), presenting
 * cert/key when not NULL. */
static inline grpc_channel *sec_tls_channel(const char *target, const char *ca,
                                            const char *cert, const char *key)
{
    char *pca = ca ? sec_read(ca) : NULL, *pcert = cert ? sec_read(cert) : NULL,
         *pkey = key ? sec_read(key) : NULL;
    grpc_ssl_pem_key_cert_pair pair = {pkey, pcert};
    grpc_channel_credentials *creds = grpc_ssl_credentials_create(pca, cert ? &pair : NULL,
                                                                  NULL, NULL);
    grpc_arg args[3];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = 1 << 30;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
    args[1].value.integer = 1;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[2].value.integer = 200;
    grpc_channel_args ca_args = {3, args};
    grpc_channel *c = grpc_channel_create(target, creds, &ca_args);
    grpc_channel_credentials_release(creds);
    free(pca);
    free(pcert);
    free(pkey);
    return c;
}

/* ---- calls that carry a bearer token -------------------------------------------- */

/* Copy a call's status details into the caller's buffer (cut to fit). */
static inline void sec_details(char *details, size_t dcap, const char *from)
{
    if (!details || !dcap)
        return;
    size_t n = strnlen(from, dcap - 1);
    memcpy(details, from, n);
    details[n] = '\0';
}

/* Open a call and send its initial metadata with token (NULL: none). */
static inline int sec_call_open(rg_call *c, grpc_channel *chn, const char *method,
                                const char *token, int64_t ms)
{
    char value[128];
    grpc_metadata md;
    grpc_op op;
    if (rg_call_open(c, chn, method, ms))
        return -1;
    memset(&md, 0, sizeof md);
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    if (token) {
        snprintf(value, sizeof value, "Bearer %s", token);
        md.key = grpc_slice_from_static_string("authorization");
        md.value = grpc_slice_from_copied_string(value);
        op.data.send_initial_metadata.count = 1;
        op.data.send_initial_metadata.metadata = &md;
    }
    int ok = rg_batch(c, &op, 1);
    if (token)
        grpc_slice_unref(md.value);
    return ok;
}

/* A unary call with token: the gRPC status code (-1: the call could not
 * run); reply bytes in *resp_p (malloc'd, may be NULL) when resp_p. */
static inline int sec_unary(grpc_channel *chn, const char *method, const char *token,
                            const void *req, size_t len, uint8_t **resp_p, size_t *rlen_p,
                            char *details, size_t dcap)
{
    rg_call c;
    uint8_t *resp = NULL;
    size_t rlen = 0;
    int code = -1;
    if (sec_call_open(&c, chn, method, token, RG_WAIT_MS) < 0)
        return -1;
    if (rg_send(&c, req, len, 1) >= 0 && rg_recv(&c, &resp, &rlen) >= 0 && rg_finish(&c) > 0)
        code = (int)c.code;
    sec_details(details, dcap, c.details);
    if (resp_p) {
        *resp_p = resp;
        *rlen_p = rlen;
    } else {
        free(resp);
    }
    rg_call_close(&c);
    return code;
}

/* CreateSession as token's tenant; its status code, the id in id. */
static inline int sec_create(grpc_channel *chn, const char *token, uint8_t id[16],
                             char *details, size_t dcap)
{
    Attnd__V1__CreateSessionRequest m = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    size_t len, rlen = 0;
    uint8_t *req = rg_pack(&m.base, &len), *resp = NULL;
    int code = sec_unary(chn, "/attnd.v1.Attnd/CreateSession", token, req, len, &resp, &rlen,
                         details, dcap);
    if (code == GRPC_STATUS_OK) {
        Attnd__V1__CreateSessionResponse *r =
            attnd__v1__create_session_response__unpack(NULL, rlen, resp);
        ck_assert_ptr_nonnull(r);
        ck_assert_uint_eq(r->session_id.len, 16);
        memcpy(id, r->session_id.data, 16);
        attnd__v1__create_session_response__free_unpacked(r, NULL);
    }
    free(req);
    free(resp);
    return code;
}

/* AppendKV of tokens [start, start + n) of `layer` in one stream. */
static inline int sec_append(grpc_channel *chn, const char *token, const uint8_t id[16],
                             uint32_t layer, int start, int n, char *details, size_t dcap)
{
    rg_call c;
    size_t len;
    int code = -1;
    uint8_t *req = append_chunk(id, layer, start, n, ATTND_DTYPE_F32, &len), *resp = NULL;
    if (sec_call_open(&c, chn, "/attnd.v1.Attnd/AppendKV", token, RG_WAIT_MS) >= 0 &&
        rg_send(&c, req, len, 1) >= 0 && rg_recv(&c, &resp, &len) >= 0 && rg_finish(&c) > 0)
        code = (int)c.code;
    sec_details(details, dcap, c.details);
    free(req);
    free(resp);
    rg_call_close(&c);
    return code;
}

/* Attend at layer with query `step` (and token pos's entry as new KV when
 * pos >= 0); on OK the reply is checked against the float64 answer over
 * n_expect tokens. */
static inline int sec_attend(grpc_channel *chn, const char *token, const uint8_t id[16],
                             uint32_t layer, int step, int pos, int n_expect, char *details,
                             size_t dcap)
{
    size_t len, rlen = 0;
    uint8_t *req = attend_req(id, layer, step, pos, 7, &len), *resp = NULL;
    int code = sec_unary(chn, "/attnd.v1.Attnd/Attend", token, req, len, &resp, &rlen,
                         details, dcap);
    if (code == GRPC_STATUS_OK)
        check_attend_reply(resp, rlen, step, n_expect, 7);
    free(req);
    free(resp);
    return code;
}

static inline int sec_close(grpc_channel *chn, const char *token, const uint8_t id[16],
                            char *details, size_t dcap)
{
    Attnd__V1__CloseSessionRequest m = ATTND__V1__CLOSE_SESSION_REQUEST__INIT;
    size_t len;
    m.session_id.len = 16;
    m.session_id.data = (uint8_t *)id;
    uint8_t *req = rg_pack(&m.base, &len);
    int code = sec_unary(chn, "/attnd.v1.Attnd/CloseSession", token, req, len, NULL, NULL,
                         details, dcap);
    free(req);
    return code;
}

/* GetStats as token's tenant (OK required); free the reply. */
static inline Attnd__V1__GetStatsResponse *sec_stats(grpc_channel *chn, const char *token)
{
    Attnd__V1__GetStatsRequest m = ATTND__V1__GET_STATS_REQUEST__INIT;
    size_t len, rlen = 0;
    char details[256];
    uint8_t *req = rg_pack(&m.base, &len), *resp = NULL;
    ck_assert_int_eq(sec_unary(chn, "/attnd.v1.Attnd/GetStats", token, req, len, &resp, &rlen,
                               details, sizeof details),
                     GRPC_STATUS_OK);
    Attnd__V1__GetStatsResponse *r = attnd__v1__get_stats_response__unpack(NULL, rlen, resp);
    ck_assert_ptr_nonnull(r);
    free(req);
    free(resp);
    return r;
}

#endif /* ATTND_SECSVC_H */
