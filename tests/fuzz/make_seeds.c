/* Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/), valid
 * messages for the mutations to start from. Run by hand when the messages
 * change: build/tests/fuzz/fuzz_make_seeds tests/fuzz/corpus */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "attnd.pb-c.h"
#include "health.pb-c.h"

static void put(const char *dir, const char *name, uint8_t kind, const ProtobufCMessage *m)
{
    char path[4096];
    size_t n = m ? protobuf_c_message_get_packed_size(m) : 0;
    uint8_t *b = malloc(n + 1);
    b[0] = kind;
    if (m)
        protobuf_c_message_pack(m, b + 1);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n + 1, f) != n + 1) {
        perror(path);
        exit(1);
    }
    fclose(f);
    free(b);
}

static void put_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    char d1[4096], d2[4096];
    static uint8_t id[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    static uint8_t id2[16] = {2};
    static float q[2 * 8 * 80], kv[2 * 80];
    int64_t qshape[] = {2, 8, 80}, kvshape[] = {2, 80}, cshape[] = {2, 80};
    uint64_t pos[] = {3, 4};

    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_make_seeds CORPUS_DIR\n");
        return 2;
    }
    snprintf(d1, sizeof d1, "%s/srv_messages", argv[1]);
    snprintf(d2, sizeof d2, "%s/token_file", argv[1]);
    mkdir(argv[1], 0755);
    mkdir(d1, 0755);
    mkdir(d2, 0755);

    Attnd__V1__CreateSessionRequest cs = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    cs.max_tokens = 300;
    cs.model = "tiny-mla";
    put(d1, "create", 0, &cs.base);
    Attnd__V1__CloseSessionRequest cl = ATTND__V1__CLOSE_SESSION_REQUEST__INIT;
    cl.session_id.len = 16;
    cl.session_id.data = id;
    put(d1, "close", 1, &cl.base);
    Attnd__V1__AppendKVRequest ap = ATTND__V1__APPEND_KVREQUEST__INIT;
    Attnd__V1__Tensor t = ATTND__V1__TENSOR__INIT;
    t.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    t.n_shape = 2;
    t.shape = cshape;
    t.data.len = sizeof kv;
    t.data.data = (uint8_t *)kv;
    ap.session_id = cl.session_id;
    ap.layer = 1;
    ap.start = 64;
    ap.kv = &t;
    put(d1, "append", 2, &ap.base);
    Attnd__V1__AttendRequest at = ATTND__V1__ATTEND_REQUEST__INIT;
    Attnd__V1__Tensor tq = ATTND__V1__TENSOR__INIT, tk = ATTND__V1__TENSOR__INIT;
    ProtobufCBinaryData ids[2] = {{16, id}, {16, id2}};
    tq.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    tq.n_shape = 3;
    tq.shape = qshape;
    tq.data.len = sizeof q;
    tq.data.data = (uint8_t *)q;
    tk.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    tk.n_shape = 2;
    tk.shape = kvshape;
    tk.data.len = sizeof kv;
    tk.data.data = (uint8_t *)kv;
    at.layer = 2;
    at.n_session_ids = 2;
    at.session_ids = ids;
    at.q = &tq;
    put(d1, "attend", 3, &at.base);
    at.new_kv = &tk;
    at.n_positions = 2;
    at.positions = pos;
    at.return_lse = 1;
    at.request_id = 99;
    put(d1, "attend_new_kv", 3, &at.base);
    Attnd__V1__GetStatsRequest gs = ATTND__V1__GET_STATS_REQUEST__INIT;
    put(d1, "stats", 4, &gs.base);
    Attnd__V1__GetEndpointRequest ge = ATTND__V1__GET_ENDPOINT_REQUEST__INIT;
    put(d1, "endpoint", 5, &ge.base);
    Attnd__V1__LoadWeightsRequest lw = ATTND__V1__LOAD_WEIGHTS_REQUEST__INIT;
    Attnd__V1__Tensor tw = ATTND__V1__TENSOR__INIT;
    int64_t wshape[] = {8, 64, 2};
    static float w[8 * 64 * 2];
    tw.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    tw.n_shape = 3;
    tw.shape = wshape;
    tw.data.len = sizeof w;
    tw.data.data = (uint8_t *)w;
    lw.layer = 1;
    lw.w_uv = &tw;
    put(d1, "weights", 6, &lw.base);
    Grpc__Health__V1__HealthCheckRequest hc = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    hc.service = "attnd.v1.Group";
    put(d1, "health", 7, &hc.base);

    put_text(d2, "listed", "Bearer alice-0123456789abcdef\n"
                           "# tenants\n"
                           "alice-0123456789abcdef alice kv=64Mi\n"
                           "bob-0123456789abcdef01 bob sessions=2 admin\n"
                           "cert:client-a alice\n");
    put_text(d2, "unlisted", "Bearer nobody-0123456789abc\n"
                             "alice-0123456789abcdef alice\n");
    put_text(d2, "malformed", "Basic x\n"
                              "short alice\n");
    return 0;
}
