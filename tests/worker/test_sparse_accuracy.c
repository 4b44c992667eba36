/* attnd-sparse-accuracy --load (worker/bench/accuracy_load.c): a captured
 * workload written here byte by byte in the documented format
 * (worker/bench/accuracy.h) gives, through the program, exactly the figures
 * the harness's in-memory path prints for the same data, its oracle matches
 * a float64 recomputation written here, and bad files (cut short, trailing
 * bytes, wrong magic, an impossible shape, a non-finite value, a query
 * context past T) are refused with a message naming what is wrong.
 *
 * The data: record 0 a GQA layer (4 query heads on 2 KV heads, d 64,
 * 2048 tokens, two queries, the second at context 1950: a partial page),
 * each KV head with its own needle page aligned with its own query heads,
 * so that a reader mixing up heads or KV heads changes the figures;
 * record 1 an MLA latent layer (8 heads, d_k 96 = 64 + 32, 1500 tokens). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "accuracy.h"
#include "attnd_kernels.h"
#include "testutil.h"

#define PS 64
#define RANKS 2

typedef struct rec {
    uint32_t hq, hkv, T, dk, dv, nq, latent;
    float scale;
    int32_t layer;
    float *k, *v, *q; /* [hkv][T][dk], [hkv][T][dv] (NULL when latent), [nq][hq][dk] */
    uint32_t ctx[2];
} rec;

static rec recs[2];
static char dir[64];

/* Keys 0.3 N(0,1); KV head g's needle: 4 keys in page 8 + 9 g, each at
 * +10 logits for the mean of g's query heads (their queries share it). */
static void rec_make(rec *r, tu_rng *g, uint32_t hq, uint32_t hkv, uint32_t T, uint32_t dk,
                     uint32_t dv, int latent, int32_t layer)
{
    *r = (rec){.hq = hq, .hkv = hkv, .T = T, .dk = dk, .dv = dv, .nq = 2, .latent = latent,
               .scale = (float)(1.0 / sqrt(dk)), .layer = layer, .ctx = {T, T - 98}};
    r->k = malloc(sizeof(float) * hkv * T * dk);
    r->v = latent ? NULL : malloc(sizeof(float) * hkv * T * dv);
    r->q = malloc(sizeof(float) * r->nq * hq * dk);
    const uint32_t G = hq / hkv;
    double *base = malloc(sizeof(double) * dk);
    for (uint32_t kv = 0; kv < hkv; kv++) {
        double qn = 0;
        for (uint32_t d = 0; d < dk; d++) {
            base[d] = tu_normal(g);
            qn += base[d] * base[d];
        }
        for (uint32_t j = 0; j < r->nq; j++)
            for (uint32_t h = kv * G; h < (kv + 1) * G; h++)
                for (uint32_t d = 0; d < dk; d++)
                    r->q[((size_t)j * hq + h) * dk + d] = (float)(base[d] + 0.3 * tu_normal(g));
        float *k = r->k + (size_t)kv * T * dk;
        for (size_t i = 0; i < (size_t)T * dk; i++)
            k[i] = (float)(0.3 * tu_normal(g));
        for (int c = 0; c < 4; c++) {
            size_t t = (size_t)(8 + 9 * kv) * PS + (size_t)tu_int(g, 0, PS - 1);
            for (uint32_t d = 0; d < dk; d++)
                k[t * dk + d] = (float)(10.0 * sqrt((double)dk) * base[d] / qn);
        }
        if (!latent)
            for (size_t i = 0; i < (size_t)T * dv; i++)
                r->v[(size_t)kv * T * dv + i] = (float)tu_normal(g);
    }
    free(base);
}

static void put32(FILE *f, uint32_t x)
{
    unsigned char b[4] = {x & 255, (x >> 8) & 255, (x >> 16) & 255, x >> 24};
    fwrite(b, 1, 4, f);
}

static void putf(FILE *f, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        put32(f, u);
    }
}

/* The format of accuracy.h, written here independently of its reader. */
static void write_file(const char *path, const rec *rs, uint32_t n, const char *magic)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fwrite(magic, 1, 8, f);
    put32(f, 1);
    put32(f, n);
    for (uint32_t i = 0; i < n; i++) {
        const rec *r = &rs[i];
        uint32_t s;
        memcpy(&s, &r->scale, 4);
        uint32_t hdr[16] = {r->hq, r->hkv, r->T, r->dk, r->dv, r->nq, r->latent, s,
                            (uint32_t)r->layer};
        for (int w = 0; w < 16; w++)
            put32(f, hdr[w]);
        putf(f, r->k, (size_t)r->hkv * r->T * r->dk);
        if (!r->latent)
            putf(f, r->v, (size_t)r->hkv * r->T * r->dv);
        for (uint32_t j = 0; j < r->nq; j++)
            put32(f, r->ctx[j]);
        putf(f, r->q, (size_t)r->nq * r->hq * r->dk);
    }
    ck_assert_int_eq(fclose(f), 0);
}

static double bf16(float x)
{
    return attnd_dtype_bf16_to_f32(attnd_dtype_f32_to_bf16(x));
}

/* The in-memory path on record r: every KV head and query as a case. */
static void in_memory(const rec *r, attnd__acc_table *t)
{
    const uint32_t G = r->hq / r->hkv;
    double *k = malloc(sizeof(double) * r->T * r->dk), *q = malloc(sizeof(double) * G * r->dk);
    double *v = r->latent ? k : malloc(sizeof(double) * r->T * r->dv);
    attnd__acc_opts o = {.page_size = PS, .ranks = RANKS,
                         .head_agg = attnd__acc_default_agg((int32_t)G, 0)};
    for (uint32_t g = 0; g < r->hkv; g++) {
        for (size_t i = 0; i < (size_t)r->T * r->dk; i++)
            k[i] = bf16(r->k[(size_t)g * r->T * r->dk + i]);
        if (!r->latent)
            for (size_t i = 0; i < (size_t)r->T * r->dv; i++)
                v[i] = bf16(r->v[(size_t)g * r->T * r->dv + i]);
        for (uint32_t j = 0; j < r->nq; j++) {
            for (uint32_t h = 0; h < G; h++)
                for (uint32_t d = 0; d < r->dk; d++)
                    q[h * r->dk + d] = r->q[((size_t)j * r->hq + g * G + h) * r->dk + d];
            attnd__acc_case c = {.T = r->ctx[j], .hq = (int32_t)G, .dk = (int32_t)r->dk,
                                 .dv = (int32_t)r->dv, .v_in_k = (int32_t)r->latent,
                                 .scale = r->scale, .k = k, .v = v, .q = q};
            attnd_error err = {0};
            ck_assert_msg(attnd__acc_eval(&c, &o, t, &err) == ATTND_OK, "%s", err.msg);
        }
    }
    if (v != k)
        free(v);
    free(k);
    free(q);
}

/* Run the program on path: its exit status, stdout and stderr (malloc'd). */
static int run_load(const char *path, char **out, char **errs)
{
    char cmd[512], o[96], e[96];
    snprintf(o, sizeof o, "%s/out.txt", dir);
    snprintf(e, sizeof e, "%s/err.txt", dir);
    snprintf(cmd, sizeof cmd, "'%s' --load '%s' --page-size %d --ranks %d > '%s' 2> '%s'",
             ATTND_ACC_BIN, path, PS, RANKS, o, e);
    int rc = system(cmd);
    ck_assert_int_ne(rc, -1);
    const char *files[2] = {o, e};
    char **dst[2] = {out, errs};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(files[i], "rb");
        ck_assert_ptr_nonnull(f);
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        *dst[i] = calloc((size_t)n + 1, 1);
        ck_assert_int_eq((long)fread(*dst[i], 1, (size_t)n, f), n);
        fclose(f);
    }
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static char path_good[96];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/attnd-acc-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    tu_rng g;
    tu_rng_init(&g, "sparse_accuracy");
    rec_make(&recs[0], &g, 4, 2, 2048, 64, 64, 0, 3);
    rec_make(&recs[1], &g, 8, 1, 1500, 96, 64, 1, 7);
    snprintf(path_good, sizeof path_good, "%s/good.qkv", dir);
    write_file(path_good, recs, 2, "ATTNDQKV");
}

static void teardown(void)
{
    for (int i = 0; i < 2; i++) {
        free(recs[i].k);
        free(recs[i].v);
        free(recs[i].q);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Lines of s that start with "| <label> |", in order. */
static char *rows_of(const char *s, const char *label)
{
    char pre[64];
    snprintf(pre, sizeof pre, "| %s |", label);
    size_t cap = strlen(s) + 1, n = 0;
    char *r = calloc(cap, 1);
    for (const char *l = s; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l)) {
        const char *e = strchr(l, '\n');
        size_t len = e ? (size_t)(e - l + 1) : strlen(l);
        if (!strncmp(l, pre, strlen(pre))) {
            memcpy(r + n, l, len);
            n += len;
        }
    }
    return r;
}

START_TEST(test_load_prints_the_figures_of_the_in_memory_path_on_the_same_data)
{
    char *out, *errs;
    ck_assert_int_eq(run_load(path_good, &out, &errs), 0);
    attnd__acc_table all;
    memset(&all, 0, sizeof all);
    for (int i = 0; i < 2; i++) {
        attnd__acc_table t;
        memset(&t, 0, sizeof t);
        in_memory(&recs[i], &t);
        in_memory(&recs[i], &all);
        char label[32], *mem;
        size_t n;
        snprintf(label, sizeof label, "layer %d", recs[i].layer);
        FILE *m = open_memstream(&mem, &n);
        attnd__acc_print(m, label, &t, 0);
        fclose(m);
        char *got = rows_of(out, label);
        ck_assert_uint_gt(n, 0);
        ck_assert_str_eq(got, mem);
        free(got);
        free(mem);
    }
    char *mem, *got = rows_of(out, "all");
    size_t n;
    FILE *m = open_memstream(&mem, &n);
    attnd__acc_print(m, "all", &all, 0);
    fclose(m);
    ck_assert_uint_gt(n, 0);
    ck_assert_str_eq(got, mem);
    free(got);
    free(mem);
    free(out);
    free(errs);
}
END_TEST

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* Mean over KV heads, queries and heads of the oracle's recall at 1/16:
 * the dense mass of each head's 1/16 of pages of most mass (float64). */
static double oracle_recall(const rec *r)
{
    const uint32_t G = r->hq / r->hkv;
    double sum = 0;
    int n = 0;
    for (uint32_t g = 0; g < r->hkv; g++)
        for (uint32_t j = 0; j < r->nq; j++)
            for (uint32_t h = g * G; h < (g + 1) * G; h++) {
                const uint32_t T = r->ctx[j], np = (T + PS - 1) / PS;
                double *s = malloc(sizeof(double) * T), *pm = calloc(np, sizeof(double));
                double mx = -INFINITY, z = 0, m = 0;
                for (uint32_t t = 0; t < T; t++) {
                    s[t] = 0;
                    for (uint32_t d = 0; d < r->dk; d++)
                        s[t] += r->q[((size_t)j * r->hq + h) * r->dk + d] *
                                bf16(r->k[((size_t)g * r->T + t) * r->dk + d]);
                    s[t] *= r->scale;
                    mx = fmax(mx, s[t]);
                }
                for (uint32_t t = 0; t < T; t++)
                    z += (s[t] = exp(s[t] - mx));
                for (uint32_t t = 0; t < T; t++)
                    pm[t / PS] += s[t] / z;
                qsort(pm, np, sizeof *pm, cmp_desc);
                for (uint32_t p = 0; p < (uint32_t)ceil(np / 16.0); p++)
                    m += pm[p];
                sum += m, n++;
                free(s);
                free(pm);
            }
    return sum / n;
}

START_TEST(test_loaded_oracle_recall_equals_a_float64_recomputation)
{
    char *out, *errs;
    ck_assert_int_eq(run_load(path_good, &out, &errs), 0);
    for (int i = 0; i < 2; i++) {
        char pre[64];
        snprintf(pre, sizeof pre, "| layer %d | oracle pages | 1/16 | ", recs[i].layer);
        const char *l = strstr(out, pre);
        ck_assert_ptr_nonnull(l);
        double got = atof(l + strlen(pre)), want = oracle_recall(&recs[i]);
        ck_assert_msg(fabs(got - want) <= 0.0005 + 1e-9, "record %d: printed %.3f, float64 %.6f",
                      i, got, want);
        ck_assert_double_gt(want, 0.5); /* the needles hold most of the mass */
    }
    free(out);
    free(errs);
}
END_TEST

/* The program refuses path: exit 1, nothing evaluated, stderr has want. */
static void expect_refused(const char *path, const char *want)
{
    char *out, *errs;
    ck_assert_int_eq(run_load(path, &out, &errs), 1);
    ck_assert_msg(strstr(errs, want) != NULL, "stderr \"%s\" lacks \"%s\"", errs, want);
    ck_assert_ptr_null(strstr(out, "| layer"));
    free(out);
    free(errs);
}

START_TEST(test_a_truncated_file_is_refused_naming_the_size)
{
    char p[128];
    snprintf(p, sizeof p, "%s/cut.qkv", dir);
    write_file(p, recs, 2, "ATTNDQKV");
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    ck_assert_int_eq(truncate(p, n - 10), 0);
    char want[96];
    snprintf(want, sizeof want, "file size %ld: record 1 needs", n - 10);
    expect_refused(p, want);
}
END_TEST

START_TEST(test_bytes_after_the_last_record_are_refused)
{
    char p[128];
    snprintf(p, sizeof p, "%s/long.qkv", dir);
    write_file(p, recs, 2, "ATTNDQKV");
    FILE *f = fopen(p, "ab");
    fputs("junk", f);
    fclose(f);
    expect_refused(p, "4 bytes after the last of 2 records");
}
END_TEST

START_TEST(test_a_file_with_a_wrong_magic_is_refused)
{
    char p[128];
    snprintf(p, sizeof p, "%s/magic.qkv", dir);
    write_file(p, recs, 2, "ATTNDKVQ");
    expect_refused(p, "bad magic");
}
END_TEST

START_TEST(test_kv_heads_that_do_not_divide_the_query_heads_are_refused)
{
    char p[128];
    snprintf(p, sizeof p, "%s/shape.qkv", dir);
    rec r = recs[0];
    r.hq = 3;
    write_file(p, &r, 1, "ATTNDQKV");
    expect_refused(p, "record 0: n_kv_heads 2 does not divide n_q_heads 3");
}
END_TEST

START_TEST(test_a_non_finite_key_is_refused_naming_it)
{
    char p[128];
    snprintf(p, sizeof p, "%s/nan.qkv", dir);
    rec r = recs[1];
    float keep = r.k[777];
    r.k[777] = NAN;
    write_file(p, &r, 1, "ATTNDQKV");
    recs[1].k[777] = keep;
    expect_refused(p, "record 0: K[777] is not finite");
}
END_TEST

START_TEST(test_a_query_context_past_the_keys_is_refused)
{
    char p[128];
    snprintf(p, sizeof p, "%s/ctx.qkv", dir);
    rec r = recs[0];
    r.ctx[1] = r.T + 1;
    write_file(p, &r, 1, "ATTNDQKV");
    expect_refused(p, "record 0: ctx[1] = 2049 out of 1..T (2048)");
}
END_TEST

static Suite *accuracy_suite(void)
{
    Suite *s = suite_create("sparse_accuracy");
    TCase *tc = tcase_create("load");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_load_prints_the_figures_of_the_in_memory_path_on_the_same_data);
    tcase_add_test(tc, test_loaded_oracle_recall_equals_a_float64_recomputation);
    tcase_add_test(tc, test_a_truncated_file_is_refused_naming_the_size);
    tcase_add_test(tc, test_bytes_after_the_last_record_are_refused);
    tcase_add_test(tc, test_a_file_with_a_wrong_magic_is_refused);
    tcase_add_test(tc, test_kv_heads_that_do_not_divide_the_query_heads_are_refused);
    tcase_add_test(tc, test_a_non_finite_key_is_refused_naming_it);
    tcase_add_test(tc, test_a_query_context_past_the_keys_is_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(accuracy_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
