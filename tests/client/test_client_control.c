/* Client control suite: connecting, health, the model description, stats
 * counters, stream life cycle, and one client shared by several threads.
 * Every RPC's answer is asserted, and every Attend output is checked
 * against the float64 reference.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_testutil.h"

static const uint32_t chunks_30[] = {30, 0};

/* A port nothing listens on, reserved: a socket bound to port 0 and kept
 * bound without listen(), so a connect is refused and no other process can
 * take the port while the test runs (closing it first would let one).
 * Returns the socket; *port_p gets its port. */
static int unlistened_port(int *port_p)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port_p = ntohs(a.sin_port);
    return fd;
}

START_TEST(test_connect_to_a_port_nobody_listens_on_is_unavailable)
{
    attnd_client_options o;
    attnd_client *c = (attnd_client *)&o; /* must stay untouched */
    attnd_error err;
    char target[64];
    int port, fd = unlistened_port(&port);

    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    attnd_client_options_init(&o);
    o.connect_timeout_ms = 300;
    attnd_error_clear(&err);
    cu_assert_fails(attnd_client_connect(target, &o, &c, &err), err, ATTND_ERR_UNAVAILABLE,
                    target);
    ck_assert_ptr_eq(c, (attnd_client *)&o);
    close(fd);
}
END_TEST

START_TEST(test_connect_with_null_arguments_is_invalid_argument)
{
    attnd_client *c = NULL;
    attnd_error err;
    attnd_error_clear(&err);
    cu_assert_fails(attnd_client_connect(NULL, NULL, &c, &err), err,
                    ATTND_ERR_INVALID_ARGUMENT, "target");
    cu_assert_fails(attnd_client_connect("127.0.0.1:1", NULL, NULL, &err), err,
                    ATTND_ERR_INVALID_ARGUMENT, "client_p");
    ck_assert_ptr_null(c);
}
END_TEST

START_TEST(test_options_default_to_the_documented_values)
{
    attnd_client_options o;
    attnd_client_options_init(&o);
    ck_assert_int_eq(o.deadline_ms, 30000);
    ck_assert_int_eq(o.connect_timeout_ms, 5000);
    ck_assert_uint_eq(o.max_message_bytes, 256u << 20);
}
END_TEST

START_TEST(test_health_of_a_running_server_is_serving)
{
    attnd_client *c;
    attnd_error err;
    int serving = -1;

    cu_must_start("--model", "tiny-mla");
    c = cu_must_connect();
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_health(c, "", &serving, &err), ATTND_OK);
    ck_assert_int_eq(serving, 1);
    serving = -1;
    ck_assert_int_eq(attnd_client_health(c, NULL, &serving, &err), ATTND_OK);
    ck_assert_int_eq(serving, 1);
    serving = -1;
    ck_assert_int_eq(attnd_client_health(c, "attnd.v1.Attnd", &serving, &err), ATTND_OK);
    ck_assert_int_eq(serving, 1);
    serving = -1;
    cu_assert_fails(attnd_client_health(c, "no.such.Service", &serving, &err), err,
                    ATTND_ERR_NOT_FOUND, "service");
    ck_assert_int_eq(serving, -1);
    attnd_client_destroy(c);
}
END_TEST

START_TEST(test_create_session_reports_the_served_model)
{
    attnd_client *c;
    attnd_model_info m, ms;
    attnd_session_id id;
    attnd_stats st;
    attnd_error err;

    cu_must_start("--model", "tiny-mla", "--page-size", "32", "--kv-dtype", "f16");
    c = cu_must_connect();
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_create_session(c, "tiny-mla", 0, &id, &m, &err), ATTND_OK);
    ck_assert_str_eq(m.name, "tiny-mla");
    ck_assert_int_eq(m.kind, ATTND_ATTN_MLA);
    ck_assert_uint_eq(m.n_layers, 4);
    ck_assert_uint_eq(m.n_q_heads, 8);
    ck_assert_uint_eq(m.n_kv_heads, 1);
    ck_assert_uint_eq(m.head_dim, 0);
    ck_assert_uint_eq(m.d_latent, 64);
    ck_assert_uint_eq(m.d_rope, 16);
    ck_assert_float_eq_tol(m.scale, 0.14433756729740644f, 1e-7f);
    ck_assert_int_eq(m.kv_dtype, ATTND_DTYPE_F16);
    ck_assert_uint_eq(m.page_size, 32);
    ck_assert_uint_eq(m.d_k, 80);
    ck_assert_uint_eq(m.d_v, 64);
    ck_assert_uint_eq(m.kv_token_elems, 80);
    /* GetStats says the same */
    ck_assert_int_eq(attnd_client_get_stats(c, &st, &ms, &err), ATTND_OK);
    ck_assert_mem_eq(&m, &ms, sizeof m);
    ck_assert_int_eq(attnd_client_close_session(c, &id, &err), ATTND_OK);
    attnd_client_destroy(c);
}
END_TEST

START_TEST(test_a_gqa_model_reports_its_heads_and_entry_size)
{
    attnd_client *c;
    attnd_model_info m;
    attnd_session_id id;
    attnd_error err;

    cu_must_start("--model", "tiny-gqa");
    c = cu_must_connect();
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_create_session(c, NULL, 0, &id, &m, &err), ATTND_OK);
    ck_assert_str_eq(m.name, "tiny-gqa");
    ck_assert_int_eq(m.kind, ATTND_ATTN_GQA);
    ck_assert_uint_eq(m.n_layers, 3);
    ck_assert_uint_eq(m.n_q_heads, 8);
    ck_assert_uint_eq(m.n_kv_heads, 2);
    ck_assert_uint_eq(m.head_dim, 32);
    ck_assert_uint_eq(m.d_k, 32);
    ck_assert_uint_eq(m.d_v, 32);
    ck_assert_uint_eq(m.kv_token_elems, 128);
    ck_assert_int_eq(m.kv_dtype, ATTND_DTYPE_BF16);
    ck_assert_uint_eq(m.page_size, 64);
    attnd_client_destroy(c);
}
END_TEST

static attnd_stats must_stats(attnd_client *c)
{
    attnd_stats st;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_msg(attnd_client_get_stats(c, &st, NULL, &err) == ATTND_OK, "%s", err.msg);
    return st;
}

/* tiny-gqa: entry 2 x 2 x 32 bf16 = 256 bytes, page 64 x 256 = 16 KiB. */
START_TEST(test_stats_counters_move_as_expected)
{
    attnd_client *c;
    cu_seqs s;
    cu_step st;
    attnd_refcheck_result res = {0};
    attnd_error err;
    attnd_stats a, b;

    cu_must_start("--model", "tiny-gqa", "--kv-memory", "16Mi", "--max-sessions", "5");
    c = cu_must_connect();
    a = must_stats(c);
    ck_assert_uint_eq(a.sessions, 0);
    ck_assert_uint_eq(a.max_sessions, 5);
    ck_assert_uint_eq(a.page_bytes, 16384);
    ck_assert_uint_eq(a.pages_total, (16u << 20) / 16384);
    ck_assert_uint_eq(a.pages_used + a.pages_reserved, 0);
    ck_assert_uint_eq(a.attend_calls + a.attend_sequences + a.append_calls, 0);
    ck_assert_uint_eq(a.tokens_appended + a.kv_bytes_read + a.errors, 0);

    cu_must_open(&s, c, 2, ATTND_DTYPE_BF16);
    cu_must_prefill(&s, 0, 100, chunks_30); /* 4 chunks per layer, 2 pages */
    b = must_stats(c);
    ck_assert_uint_eq(b.sessions, 2);
    ck_assert_uint_eq(b.append_calls, 3 * 4);
    ck_assert_uint_eq(b.tokens_appended, 3 * 100);
    ck_assert_uint_eq(b.pages_used, 3 * 2);

    /* one Attend of both on layer 0; session 1 is empty until its new entry */
    cu_step_make(&s, &st, 0, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
    ck_assert_uint_eq(st.pos[1], 0);
    attnd_error_clear(&err);
    ck_assert_msg(attnd_client_attend(c, &st.a, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
    cu_step_free(&st);
    ck_assert_msg(res.max_err <= 1e-2 && res.max_lse_err <= CU_LSE_BOUND, "error %g / %g",
                  res.max_err, res.max_lse_err);
    ck_assert_uint_eq(res.rows, 2 * 8);
    b = must_stats(c);
    ck_assert_uint_eq(b.attend_calls, 1);
    ck_assert_uint_eq(b.attend_sequences, 2);
    ck_assert_uint_eq(b.tokens_appended, 300 + 2);
    ck_assert_uint_eq(b.kv_bytes_read, (101 + 1) * 256);
    ck_assert_uint_eq(b.pages_used, 3 * 2 + 1);
    ck_assert_uint_eq(b.errors, 0);

    /* failures count as errors and nothing else */
    ck_assert_int_eq(attnd_client_close_session(c, &(attnd_session_id){{0}}, &err),
                     ATTND_ERR_NOT_FOUND);
    cu_step_make(&s, &st, 7, 0, 2, 1, 1, 0, ATTND_DTYPE_INVALID);
    ck_assert_int_eq(attnd_client_attend(c, &st.a, &err), ATTND_ERR_OUT_OF_RANGE);
    ck_assert(cu_step_untouched(&st));
    cu_step_free(&st);
    a = b;
    b = must_stats(c);
    ck_assert_uint_eq(b.errors, 2);
    ck_assert_uint_eq(b.attend_calls, a.attend_calls);
    ck_assert_uint_eq(b.tokens_appended, a.tokens_appended);
    ck_assert_uint_eq(b.pages_used, a.pages_used);

    /* a reservation, then closing gives everything back */
    attnd_session_id r;
    ck_assert_int_eq(attnd_client_create_session(c, NULL, 100, &r, NULL, &err), ATTND_OK);
    b = must_stats(c);
    ck_assert_uint_eq(b.sessions, 3);
    ck_assert_uint_eq(b.pages_reserved, 3 * 2);
    ck_assert_int_eq(attnd_client_close_session(c, &r, &err), ATTND_OK);
    cu_seqs_close(&s);
    b = must_stats(c);
    ck_assert_uint_eq(b.sessions, 0);
    ck_assert_uint_eq(b.pages_used + b.pages_reserved, 0);
    ck_assert_uint_ge(b.uptime_ms, a.uptime_ms);
    attnd_client_destroy(c);
}
END_TEST

START_TEST(test_append_kv_of_no_chunks_applies_nothing)
{
    attnd_client *c;
    attnd_error err;
    size_t applied = 99;

    cu_must_start("--model", "tiny-mla");
    c = cu_must_connect();
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_append_kv(c, NULL, 0, &applied, &err), ATTND_OK);
    ck_assert_uint_eq(applied, 0);
    ck_assert_uint_eq(must_stats(c).append_calls, 0);
    attnd_client_destroy(c);
}
END_TEST

/* A request the server refuses ends the stream: that status comes back
 * from every later call and from close. One refused locally (before it is
 * sent) does not. */
START_TEST(test_a_stream_ended_by_a_bad_request_repeats_its_status)
{
    attnd_client *c;
    cu_seqs s;
    cu_step st;
    attnd_stream *stream;
    attnd_refcheck_result res = {0};
    attnd_error err, first;

    cu_must_start("--model", "tiny-gqa");
    c = cu_must_connect();
    cu_must_open(&s, c, 2, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 65, chunks_30);
    cu_must_prefill(&s, 1, 64, chunks_30);
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_stream_open(c, &stream, &err), ATTND_OK);

    cu_step_make(&s, &st, 0, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
    ck_assert_msg(attnd_stream_attend(stream, &st.a, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
    cu_step_free(&st);

    cu_step_make(&s, &st, 1, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
    st.a.out_capacity = 1; /* refused here: the stream goes on */
    cu_assert_fails(attnd_stream_attend(stream, &st.a, &err), err, ATTND_ERR_INVALID_ARGUMENT,
                    "out_capacity");
    st.a.out_capacity = st.out_bytes;
    ck_assert_msg(attnd_stream_attend(stream, &st.a, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
    cu_step_free(&st);
    ck_assert_msg(res.max_err <= 1e-5, "max error %g", res.max_err);

    cu_step_make(&s, &st, 2, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
    st.pos[0] += 1;
    cu_assert_fails(attnd_stream_attend(stream, &st.a, &err), err,
                    ATTND_ERR_FAILED_PRECONDITION, "positions[0]");
    ck_assert(cu_step_untouched(&st));
    first = err;
    st.pos[0] -= 1; /* a good request now gets the same answer */
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_stream_attend(stream, &st.a, &err), ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_str_eq(err.msg, first.msg);
    ck_assert(cu_step_untouched(&st));
    cu_step_free(&st);
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_stream_close(stream, &err), ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_str_eq(err.msg, first.msg);

    /* and the sessions are where the mirror says */
    ck_assert_int_eq(cu_decode_step(&s, &res, &err), ATTND_OK);
    ck_assert_msg(res.max_err <= 1e-5, "max error %g", res.max_err);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
}
END_TEST

START_TEST(test_an_empty_stream_closes_ok)
{
    attnd_client *c;
    attnd_stream *stream;
    attnd_error err;

    cu_must_start("--model", "tiny-mla");
    c = cu_must_connect();
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_stream_open(c, &stream, &err), ATTND_OK);
    ck_assert_int_eq(attnd_stream_close(stream, &err), ATTND_OK);
    attnd_client_destroy(c);
}
END_TEST

/* ---- one client, several threads ------------------------------------------ */

typedef struct worker {
    attnd_client *c;
    int api; /* 0 unary, 1 async, 2 stream */
    char fail[256];
    attnd_refcheck_result res;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    cu_seqs s;
    attnd_stream *stream = NULL;
    attnd_error err;

    attnd_error_clear(&err);
    if (cu_seqs_open(&s, w->c, 2, ATTND_DTYPE_F32, 0, &err) ||
        cu_prefill(&s, 0, 150, chunks_30, &err) || cu_prefill(&s, 1, 77, chunks_30, &err) ||
        (w->api == 2 && attnd_client_stream_open(w->c, &stream, &err)))
        goto fail;
    for (int k = 0; k < 10; k++)
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            cu_step st;
            attnd_call *call;
            attnd_status rc;
            cu_step_make(&s, &st, l, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
            if (w->api == 0)
                rc = attnd_client_attend(w->c, &st.a, &err);
            else if (w->api == 1) {
                rc = attnd_client_attend_async(w->c, &st.a, &call, &err);
                if (rc == ATTND_OK)
                    rc = attnd_call_wait(call, &err);
            }
            else
                rc = attnd_stream_attend(stream, &st.a, &err);
            if (rc == ATTND_OK)
                cu_step_commit(&s, &st, &w->res);
            cu_step_free(&st);
            if (rc)
                goto fail;
        }
    if (stream && attnd_stream_close(stream, &err)) {
        stream = NULL;
        goto fail;
    }
    cu_seqs_close(&s);
    return NULL;
fail:
    snprintf(w->fail, sizeof w->fail, "api %d: %.200s", w->api, err.msg);
    if (stream)
        attnd_stream_close(stream, NULL);
    cu_seqs_close(&s);
    return NULL;
}

START_TEST(test_one_client_serves_several_threads_at_once)
{
    enum { N = 6 };
    worker w[N];
    pthread_t t[N];
    attnd_client *c;

    cu_must_start("--model", "tiny-gqa", "--kv-dtype", "f32", "--threads", "2");
    c = cu_must_connect();
    memset(w, 0, sizeof w);
    for (int i = 0; i < N; i++) {
        w[i].c = c;
        w[i].api = i % 3;
        ck_assert_int_eq(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(!w[i].fail[0], "thread %d: %s", i, w[i].fail);
        ck_assert_uint_eq(w[i].res.rows, 10 * 3 * 2 * 8);
        ck_assert_msg(w[i].res.max_err <= 1e-5, "thread %d: max error %g", i, w[i].res.max_err);
        ck_assert_msg(w[i].res.max_lse_err <= CU_LSE_BOUND, "thread %d: LSE error %g", i,
                      w[i].res.max_lse_err);
    }
    attnd_client_destroy(c);
}
END_TEST

/* After the server stops, calls fail UNAVAILABLE (never hang, never OK). */
START_TEST(test_calls_after_the_server_stopped_are_unavailable)
{
    attnd_client *c;
    attnd_error err;
    attnd_stats st;
    int serving = -1;

    cu_must_start("--model", "tiny-mla");
    c = cu_must_connect();
    ck_assert_int_eq(cu_server_stop(&cu_srv), 0);
    attnd_error_clear(&err);
    cu_assert_fails(attnd_client_get_stats(c, &st, NULL, &err), err, ATTND_ERR_UNAVAILABLE, "");
    cu_assert_fails(attnd_client_health(c, "", &serving, &err), err, ATTND_ERR_UNAVAILABLE, "");
    ck_assert_int_eq(serving, -1);
    attnd_client_destroy(c);
}
END_TEST

static Suite *control_suite(void)
{
    Suite *su = suite_create("client_control");
    TCase *tc = tcase_create("control");
    tcase_add_checked_fixture(tc, NULL, cu_teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_connect_to_a_port_nobody_listens_on_is_unavailable);
    tcase_add_test(tc, test_connect_with_null_arguments_is_invalid_argument);
    tcase_add_test(tc, test_options_default_to_the_documented_values);
    tcase_add_test(tc, test_health_of_a_running_server_is_serving);
    tcase_add_test(tc, test_create_session_reports_the_served_model);
    tcase_add_test(tc, test_a_gqa_model_reports_its_heads_and_entry_size);
    tcase_add_test(tc, test_stats_counters_move_as_expected);
    tcase_add_test(tc, test_append_kv_of_no_chunks_applies_nothing);
    tcase_add_test(tc, test_a_stream_ended_by_a_bad_request_repeats_its_status);
    tcase_add_test(tc, test_an_empty_stream_closes_ok);
    tcase_add_test(tc, test_one_client_serves_several_threads_at_once);
    tcase_add_test(tc, test_calls_after_the_server_stopped_are_unavailable);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(control_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
