/* Check suite of the engine's device choice (worker/backend.h): device
 * names, and that an engine asked for a GPU either gets one or fails at
 * creation with a message that says why, leaving nothing behind (run under
 * ASan on the CPU build, this covers the GPU pool's bookkeeping path up to
 * the backend's refusal). The GPU itself is tests/gpu/test_gpu_e2e's. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_worker.h"
#include "backend.h"

#ifdef ATTND_TEST_HAVE_CUDA
#include "attnd_cuda.h"
#endif

static attnd_engine_config tiny_config(const char *model, const char *device)
{
    attnd_engine_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.model = *attnd_model_find(model);
    cfg.page_size = 64;
    cfg.kv_memory = 16u << 20;
    cfg.max_sessions = 8;
    cfg.kernel_threads = 1;
    snprintf(cfg.device, sizeof cfg.device, "%s", device);
    return cfg;
}

START_TEST(test_device_names_parse_to_cpu_or_a_cuda_ordinal)
{
    static const struct {
        const char *s;
        int32_t want;
    } ok[] = {{"", -1}, {"cpu", -1}, {"cuda", 0}, {"cuda:0", 0}, {"cuda:7", 7}, {"cuda:1023", 1023}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        attnd_error err;
        int32_t d = -2;
        attnd_error_clear(&err);
        ck_assert_int_eq(attnd__device_parse(ok[i].s, &d, &err), ATTND_OK);
        ck_assert_int_eq(d, ok[i].want);
    }
}
END_TEST

START_TEST(test_bad_device_names_are_invalid_argument_naming_device)
{
    static const char *const bad[] = {"gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1024",
                                      "cuda:0x", "CPU", "cuda0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        attnd_error err;
        int32_t d = 5;
        attnd_error_clear(&err);
        ck_assert_int_eq(attnd__device_parse(bad[i], &d, &err), ATTND_ERR_INVALID_ARGUMENT);
        ck_assert_msg(strstr(err.msg, "device") && strstr(err.msg, bad[i]), "%s: %s", bad[i],
                      err.msg);
        ck_assert_int_eq(d, 5); /* output untouched on failure */
    }
}
END_TEST

START_TEST(test_engine_with_a_bad_device_name_is_not_created)
{
    attnd_engine_config cfg = tiny_config("tiny-mla", "gpu0");
    attnd_engine *e = (attnd_engine *)0x1;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_engine_create(&cfg, &e, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_eq(e, (attnd_engine *)0x1);
    ck_assert_ptr_nonnull(strstr(err.msg, "device"));
}
END_TEST

START_TEST(test_cpu_device_names_make_a_cpu_engine)
{
    const char *names[] = {"", "cpu"};
    for (int i = 0; i < 2; i++) {
        attnd_engine_config cfg = tiny_config("tiny-gqa", names[i]);
        attnd_engine *e = NULL;
        attnd_error err;
        attnd_session_id id;
        attnd_error_clear(&err);
        ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "%s", err.msg);
        ck_assert_int_eq(attnd_engine_session_create(e, 100, &id, &err), ATTND_OK);
        attnd_engine_destroy(e);
    }
}
END_TEST

/* A model with no GPU kernel (tiny-mla: 64 + 16) on cuda:0: refused, with
 * the reason: no CUDA in this build, no device here, or the shape. */
START_TEST(test_cuda_engine_for_a_model_without_gpu_kernels_is_refused)
{
    attnd_engine_config cfg = tiny_config("tiny-mla", "cuda:0");
    attnd_engine *e = NULL;
    attnd_error err;
    attnd_error_clear(&err);
    attnd_status st = attnd_engine_create(&cfg, &e, &err);
    ck_assert_ptr_null(e);
#ifdef ATTND_TEST_HAVE_CUDA
    if (attnd_cuda_device_count() > 0) {
        ck_assert_int_eq(st, ATTND_ERR_UNIMPLEMENTED);
        ck_assert_msg(strstr(err.msg, "d_latent 64"), "%s", err.msg);
    } else {
        ck_assert_int_eq(st, ATTND_ERR_UNAVAILABLE);
        ck_assert_msg(strstr(err.msg, "cuda:0"), "%s", err.msg);
    }
#else
    ck_assert_int_eq(st, ATTND_ERR_UNIMPLEMENTED);
    ck_assert_msg(strstr(err.msg, "without CUDA"), "%s", err.msg);
#endif
}
END_TEST

/* A shape the kernels take (deepseek-v3): on a machine without a usable GPU
 * the engine is refused at creation, never quietly made on the CPU. */
START_TEST(test_cuda_engine_without_a_gpu_is_refused_at_creation)
{
    attnd_engine_config cfg = tiny_config("deepseek-v3", "cuda:0");
    attnd_engine *e = NULL;
    attnd_error err;
    attnd_error_clear(&err);
    attnd_status st = attnd_engine_create(&cfg, &e, &err);
#ifdef ATTND_TEST_HAVE_CUDA
    if (attnd_cuda_device_count() > 0) { /* a GPU here: created on it */
        ck_assert_msg(st == ATTND_OK, "%s", err.msg);
        attnd_engine_destroy(e);
        return;
    }
    ck_assert_int_eq(st, ATTND_ERR_UNAVAILABLE);
#else
    ck_assert_int_eq(st, ATTND_ERR_UNIMPLEMENTED);
#endif
    ck_assert_ptr_null(e);
    ck_assert_ptr_nonnull(strstr(err.msg, "device"));
}
END_TEST

static Suite *device_suite(void)
{
    Suite *s = suite_create("worker_device");
    TCase *tc = tcase_create("device");
    tcase_add_test(tc, test_device_names_parse_to_cpu_or_a_cuda_ordinal);
    tcase_add_test(tc, test_bad_device_names_are_invalid_argument_naming_device);
    tcase_add_test(tc, test_engine_with_a_bad_device_name_is_not_created);
    tcase_add_test(tc, test_cpu_device_names_make_a_cpu_engine);
    tcase_add_test(tc, test_cuda_engine_for_a_model_without_gpu_kernels_is_refused);
    tcase_add_test(tc, test_cuda_engine_without_a_gpu_is_refused_at_creation);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(device_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
