/* Helpers of the client test suites (see client_testutil.h). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client_testutil.h"

#ifndef ATTND_BIN
#error "ATTND_BIN (the path of the attnd executable) must be defined"
#endif

cu_server cu_srv;

/* ATTND_TEST_TRANSPORT=ucx runs a suite's Attend calls over the UCX
 * transport: servers also get --ucx-listen auto and clients ask for UCX
 * (CTest registers the decode and error suites a second time that way). */
int cu_use_ucx(void)
{
    const char *t = getenv("ATTND_TEST_TRANSPORT");
    return t && strcmp(t, "ucx") == 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void remove_port_file(cu_server *s)
{
    if (!s->port_file[0])
        return;
    unlink(s->port_file);
    char *slash = strrchr(s->port_file, '/');
    if (slash) {
        *slash = '\0';
        rmdir(s->port_file);
    }
    s->port_file[0] = '\0';
}

int cu_server_start(cu_server *s, const char *const *flags)
{
    char dir[] = "/tmp/attnd-ctest-XXXXXX";
    const char *argv[64];
    int n = 0;
    pid_t parent = getpid();

    memset(s, 0, sizeof *s);
    if (!mkdtemp(dir)) {
        perror("cu_server_start: mkdtemp");
        return -1;
    }
    snprintf(s->port_file, sizeof s->port_file, "%s/port", dir);
    argv[n++] = ATTND_BIN;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--port-file";
    argv[n++] = s->port_file;
    argv[n++] = "--kv-memory"; /* later flags win */
    argv[n++] = "256Mi";
    argv[n++] = "--shutdown-grace-ms";
    argv[n++] = "5000";
    if (cu_use_ucx()) {
        argv[n++] = "--ucx-listen";
        argv[n++] = "auto";
    }
    for (int i = 0; flags && flags[i] && n < 63; i++)
        argv[n++] = flags[i];
    argv[n] = NULL;

    s->pid = fork();
    if (s->pid < 0) {
        perror("cu_server_start: fork");
        remove_port_file(s);
        return -1;
    }
    if (s->pid == 0) {
        /* die with the test process, however it ends */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO);
        execv(ATTND_BIN, (char *const *)argv);
        perror("cu_server_start: exec " ATTND_BIN);
        _exit(127);
    }
    for (int waited = 0; waited < 30000; waited += 5) {
        int status;
        FILE *f = fopen(s->port_file, "r");
        if (f) {
            int ok = fscanf(f, "%d", &s->port) == 1;
            fclose(f);
            if (ok && s->port > 0) {
                snprintf(s->target, sizeof s->target, "127.0.0.1:%d", s->port);
                remove_port_file(s); /* read once: nothing is left if the test dies */
                return 0;
            }
        }
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            fprintf(stderr, "cu_server_start: attnd exited early (status %d)\n", status);
            s->pid = 0;
            remove_port_file(s);
            return -1;
        }
        sleep_ms(5);
    }
    fprintf(stderr, "cu_server_start: no port file after 30 s\n");
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    remove_port_file(s);
    return -1;
}

int cu_server_stop(cu_server *s)
{
    int status = 0, rc = -1;

    if (s->pid <= 0)
        return -1;
    kill(s->pid, SIGTERM);
    for (int waited = 0; waited < 30000; waited += 5) {
        pid_t p = waitpid(s->pid, &status, WNOHANG);
        if (p == s->pid) {
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            if (waited >= 1000)
                fprintf(stderr, "cu_server_stop: attnd took %d ms to stop\n", waited);
            if (!WIFEXITED(status))
                fprintf(stderr, "cu_server_stop: attnd died of signal %d\n", WTERMSIG(status));
            goto out;
        }
        sleep_ms(5);
    }
    fprintf(stderr, "cu_server_stop: attnd did not stop within 30 s; killing it\n");
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
out:
    remove_port_file(s);
    s->pid = 0;
    return rc;
}

void cu_must_start_list(const char *const *flags)
{
    ck_assert_msg(cu_server_start(&cu_srv, flags) == 0, "attnd did not start");
}

void cu_teardown(void)
{
    if (cu_srv.pid > 0)
        ck_assert_int_eq(cu_server_stop(&cu_srv), 0);
}

attnd_status cu_connect(attnd_client **c_p, attnd_error *err)
{
    attnd_client_options o;

    attnd_client_options_init(&o);
    o.deadline_ms = 120000; /* hang guards only */
    o.connect_timeout_ms = 30000;
    if (cu_use_ucx())
        o.transport = ATTND_TRANSPORT_UCX;
    return attnd_client_connect(cu_srv.target, &o, c_p, err);
}

attnd_client *cu_must_connect(void)
{
    attnd_client *c = NULL;
    attnd_error err;

    attnd_error_clear(&err);
    attnd_status st = cu_connect(&c, &err);
    ck_assert_msg(st == ATTND_OK, "connect %s: %s", cu_srv.target, err.msg);
    return c;
}

/* ---- sessions ---------------------------------------------------------------- */

double cu_bound(attnd_dtype t)
{
    return t == ATTND_DTYPE_F32 ? 1e-5 : t == ATTND_DTYPE_F16 ? 1e-3 : 1e-2;
}

attnd_status cu_seqs_open(cu_seqs *s, attnd_client *c, uint32_t n, attnd_dtype dt,
                          uint64_t seed, attnd_error *err)
{
    return cu_seqs_open_reserved(s, c, n, dt, seed, 0, err);
}

attnd_status cu_seqs_open_reserved(cu_seqs *s, attnd_client *c, uint32_t n, attnd_dtype dt,
                                   uint64_t seed, uint32_t max_tokens, attnd_error *err)
{
    attnd_status st;

    memset(s, 0, sizeof *s);
    s->c = c;
    s->dt = dt;
    if (!seed) {
        const char *env = getenv("ATTND_TEST_SEED");
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = env ? strtoull(env, NULL, 0) : ((uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 20);
        fprintf(stderr, "[client test] ATTND_TEST_SEED=%llu\n", (unsigned long long)seed);
    }
    attnd_rng_seed(&s->rng, seed);
    for (uint32_t i = 0; i < n && i < CU_MAX_SEQS; i++) {
        st = attnd_client_create_session(c, NULL, max_tokens, &s->ids[i], i ? NULL : &s->m,
                                         err);
        if (st)
            return st;
        s->n++;
    }
    if (attnd_refcheck_init(&s->rc, &s->m, n))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "mirror: no memory");
    return ATTND_OK;
}

void cu_seqs_close(cu_seqs *s)
{
    for (uint32_t i = 0; i < s->n; i++)
        attnd_client_close_session(s->c, &s->ids[i], NULL);
    attnd_refcheck_cleanup(&s->rc);
    s->n = 0;
}

void cu_must_open(cu_seqs *s, attnd_client *c, uint32_t n, attnd_dtype dt)
{
    attnd_error err;
    attnd_error_clear(&err);
    attnd_status st = cu_seqs_open(s, c, n, dt, 0, &err);
    ck_assert_msg(st == ATTND_OK, "open sessions: %s", err.msg);
}

attnd_status cu_prefill(cu_seqs *s, uint32_t i, uint64_t tokens, const uint32_t *chunks,
                        attnd_error *err)
{
    const attnd_model_info *m = &s->m;
    const size_t eb = (size_t)m->kv_token_elems * attnd_dtype_size(s->dt);
    size_t max_chunks = (size_t)m->n_layers * (tokens + 1), n = 0, applied = 0;
    attnd_kv_chunk *ch = calloc(max_chunks, sizeof *ch);
    unsigned char *buf = malloc((size_t)m->n_layers * tokens * eb + 1);
    attnd_status st = ATTND_OK;

    if (!ch || !buf) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "prefill: no memory");
        goto out;
    }
    size_t nc = 0; /* chunk sizes to cycle through */
    while (chunks && chunks[nc])
        nc++;
    attnd_rng_fill(&s->rng, s->dt, buf, (size_t)m->n_layers * tokens * m->kv_token_elems);
    for (uint32_t l = 0; l < m->n_layers; l++) {
        uint64_t start = attnd_refcheck_len(&s->rc, i, l);
        for (uint64_t t = 0, k = 0; t < tokens; k++) {
            uint64_t want = nc ? chunks[k % nc] : tokens;
            uint64_t c = tokens - t < want ? tokens - t : want;
            ch[n++] = (attnd_kv_chunk){
                .session = s->ids[i],
                .layer = l,
                .start = start + t,
                .n_tokens = (uint32_t)c,
                .kv_token_elems = m->kv_token_elems,
                .dtype = s->dt,
                .data = buf + ((size_t)l * tokens + t) * eb,
            };
            t += c;
        }
    }
    st = attnd_client_append_kv(s->c, ch, n, &applied, err);
    if (st == ATTND_OK && applied != n)
        st = attnd_error_set(err, ATTND_ERR_INTERNAL, "prefill: %zu of %zu chunks applied",
                             applied, n);
    /* mirror what the server applied, failure or not */
    for (size_t k = 0; k < applied && k < n; k++)
        if (attnd_refcheck_append(&s->rc, i, ch[k].layer, ch[k].n_tokens, s->dt, ch[k].data))
            abort(); /* out of memory in a test */
out:
    free(ch);
    free(buf);
    return st;
}

void cu_must_prefill(cu_seqs *s, uint32_t i, uint64_t tokens, const uint32_t *chunks)
{
    attnd_error err;
    attnd_error_clear(&err);
    attnd_status st = cu_prefill(s, i, tokens, chunks, &err);
    ck_assert_msg(st == ATTND_OK, "prefill session %u: %s: %s", i, attnd_status_string(st),
                  err.msg);
}

/* ---- steps ------------------------------------------------------------------- */

#define SENTINEL 0xA5

void cu_step_make(cu_seqs *s, cu_step *st, uint32_t layer, uint32_t first, uint32_t n,
                  uint32_t S, int with_kv, int want_lse, attnd_dtype out_t)
{
    const attnd_model_info *m = &s->m;
    const size_t ds = attnd_dtype_size(s->dt);
    attnd_dtype ot = out_t != ATTND_DTYPE_INVALID ? out_t : s->dt;
    attnd_attend_args *a = &st->a;

    memset(st, 0, sizeof *st);
    st->first = first;
    st->q_tokens = S;
    st->q_bytes = (size_t)n * S * m->n_q_heads * m->d_k * ds;
    st->kv_bytes = (size_t)n * S * m->kv_token_elems * ds;
    st->out_bytes = (size_t)n * S * m->n_q_heads * m->d_v * attnd_dtype_size(ot);
    st->q = malloc(st->q_bytes + 1);
    st->kv = malloc(st->kv_bytes + 1);
    st->out = malloc(st->out_bytes + 1);
    st->lse = malloc(sizeof(float) * n * S * m->n_q_heads + 1);
    if (!st->q || !st->kv || !st->out || !st->lse)
        abort(); /* a test machine without a few KB to spare */
    attnd_rng_fill(&s->rng, s->dt, st->q, (size_t)n * S * m->n_q_heads * m->d_k);
    attnd_rng_fill(&s->rng, s->dt, st->kv, (size_t)n * S * m->kv_token_elems);
    memset(st->out, SENTINEL, st->out_bytes);
    memset(st->lse, SENTINEL, sizeof(float) * n * S * m->n_q_heads);

    a->layer = layer;
    a->n_seqs = n;
    a->sessions = s->ids + first;
    a->q.dtype = s->dt;
    a->q.data = st->q;
    if (S == 1)
        a->q = (attnd_tensor){s->dt, 3, {n, m->n_q_heads, m->d_k}, st->q};
    else
        a->q = (attnd_tensor){s->dt, 4, {n, S, m->n_q_heads, m->d_k}, st->q};
    if (with_kv) {
        attnd_tensor *t = &a->new_kv;
        int d = 0;
        t->dtype = s->dt;
        t->data = st->kv;
        t->shape[d++] = n;
        if (S != 1)
            t->shape[d++] = S;
        if (m->kind == ATTND_ATTN_MLA) {
            t->shape[d++] = m->kv_token_elems;
        } else {
            t->shape[d++] = 2;
            t->shape[d++] = m->n_kv_heads;
            t->shape[d++] = m->head_dim;
        }
        t->ndim = d;
        for (uint32_t i = 0; i < n; i++)
            st->pos[i] = attnd_refcheck_len(&s->rc, first + i, layer);
        a->positions = st->pos;
    }
    a->out_dtype = out_t;
    a->out = st->out;
    a->out_capacity = st->out_bytes;
    if (want_lse) {
        a->lse = st->lse;
        a->lse_capacity = (size_t)n * S * m->n_q_heads;
    }
}

void cu_step_free(cu_step *st)
{
    free(st->q);
    free(st->kv);
    free(st->out);
    free(st->lse);
    memset(st, 0, sizeof *st);
}

int cu_step_untouched(const cu_step *st)
{
    const unsigned char *o = st->out, *l = (const unsigned char *)st->lse;
    for (size_t i = 0; i < st->out_bytes; i++)
        if (o[i] != SENTINEL)
            return 0;
    for (size_t i = 0; st->a.lse && i < st->a.lse_capacity * sizeof(float); i++)
        if (l[i] != SENTINEL)
            return 0;
    return 1;
}

int cu_step_commit(cu_seqs *s, cu_step *st, attnd_refcheck_result *res)
{
    const attnd_model_info *m = &s->m;
    const attnd_attend_args *a = &st->a;
    const uint32_t S = st->q_tokens, H = m->n_q_heads;
    const attnd_dtype ot = a->out_dtype != ATTND_DTYPE_INVALID ? a->out_dtype : s->dt;
    const size_t ds = attnd_dtype_size(s->dt), os = attnd_dtype_size(ot);

    for (uint32_t i = 0; a->new_kv.data && i < a->n_seqs; i++)
        if (attnd_refcheck_append(&s->rc, st->first + i, a->layer, S, s->dt,
                                  (const unsigned char *)st->kv +
                                      (size_t)i * S * m->kv_token_elems * ds))
            return -1;
    for (uint32_t i = 0; i < a->n_seqs; i++) {
        uint32_t seq = st->first + i;
        uint64_t len = attnd_refcheck_len(&s->rc, seq, a->layer);
        for (uint32_t t = 0; t < S; t++) {
            size_t row = (size_t)i * S + t;
            uint64_t visible = len >= S - 1 - t ? len - (S - 1 - t) : 0;
            if (attnd_refcheck_token(&s->rc, seq, a->layer, visible, s->dt,
                                     (const unsigned char *)st->q + row * H * m->d_k * ds, ot,
                                     (const unsigned char *)st->out + row * H * m->d_v * os,
                                     a->lse ? st->lse + row * H : NULL, 0, H, res))
                return -1;
        }
    }
    return 0;
}

attnd_status cu_decode_step(cu_seqs *s, attnd_refcheck_result *res, attnd_error *err)
{
    for (uint32_t l = 0; l < s->m.n_layers; l++) {
        cu_step st;
        cu_step_make(s, &st, l, 0, s->n, 1, 1, 1, ATTND_DTYPE_INVALID);
        attnd_status rc = attnd_client_attend(s->c, &st.a, err);
        if (rc == ATTND_OK && cu_step_commit(s, &st, res))
            rc = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "check: no memory");
        cu_step_free(&st);
        if (rc)
            return rc;
    }
    return ATTND_OK;
}
