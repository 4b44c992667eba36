/* libFuzzer target: the --token-file parser (service/auth.c) and the
 * lookup every call makes (issue 15 item 7). The input's first line is the
 * presented "authorization" value, the rest the file. A file that loads
 * must answer every token it lists with a tenant and an unlisted token
 * with UNAUTHENTICATED; one that does not load must say why (an error,
 * never a crash). The file is the operator's, not a client's, but a
 * parser that reads secrets should not be the weak spot.
 *
 * Built with -DATTND_FUZZ=ON; the corpus is replayed by CTest
 * (test_fuzz_replay_token_file). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/slice.h>

#include "auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz_token_file: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[] = "/tmp/attnd-fuzz-tokens-XXXXXX";
    const uint8_t *nl = memchr(data, '\n', size);
    size_t vlen = nl ? (size_t)(nl - data) : size;
    attnd_srv_auth *a = NULL;
    attnd_error err;

    int fd = mkstemp(path);
    if (fd < 0)
        return 0;
    if (nl && write(fd, nl + 1, size - vlen - 1) != (ssize_t)(size - vlen - 1)) {
        close(fd);
        unlink(path);
        return 0;
    }
    close(fd);
    attnd_error_clear(&err);
    if (attnd_srv_auth_open(path, 0, 0, &a, &err) == ATTND_OK) {
        grpc_metadata md;
        grpc_metadata_array arr = {1, 1, &md};
        attnd_srv_tenant *t = NULL;
        int admin = 0;
        memset(&md, 0, sizeof md);
        md.key = grpc_slice_from_static_string("authorization");
        md.value = grpc_slice_from_copied_buffer((const char *)data, vlen);
        attnd_status st = attnd_srv_auth_call(a, &arr, NULL, &t, &admin, &err);
        CHECK(st == ATTND_OK ? t != NULL && t->tag != 0 : st == ATTND_ERR_UNAUTHENTICATED);
        grpc_slice_unref(md.value);
        /* a reload of the same file gives the same answer */
        CHECK(attnd_srv_auth_reload(a, &err) == ATTND_OK);
        attnd_srv_auth_close(a);
    } else {
        CHECK(err.code != ATTND_OK && err.msg[0]);
    }
    unlink(path);
    return 0;
}
