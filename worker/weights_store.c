/* The narrow MLA wire's matrices (W_UK, W_UV) of a durable engine, kept in
 * its --kv-dir so that a restart, a crash included, serves heads-form
 * Attends again without the client loading them anew.
 *
 * One file per layer and matrix, DIR/weights/layer-LLLLL-uk.bin and
 * -uv.bin: a 72-byte header (below), then the tensor as LoadWeights gave it
 * ([Hq][rows][cols] of its dtype: the GPU keeps only device copies, so the
 * source is what can be written). A load writes the file before it swaps
 * the matrix in (tmp, fdatasync, rename, fsync of the directory), so a
 * reply of OK means the matrix survives a crash, and a failed write changes
 * nothing. Start-up (after recovery) loads every file whose header matches
 * the engine's model and whose CRC-32C holds; a file that does not is
 * named in a warning and skipped (the client loads that layer again; a
 * heads-form Attend on it is FAILED_PRECONDITION until then, never wrong
 * numbers). Engines without --durable keep nothing. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attnd_dtype.h"
#include "attnd_log.h"
#include "tier_int.h"

#define WTS_MAGIC 0x5354574e4454544full /* "ATTNDWTS" */

typedef struct wts_hdr {
    uint64_t magic;
    uint32_t version, kind;   /* kind 0: W_UK [Hq][d_nope][d_c]; 1: W_UV [Hq][d_c][d_v] */
    char model[16];           /* the engine's model name (truncated) */
    uint32_t layer, heads;
    int32_t d_latent, rows, cols, dtype;
    uint64_t bytes;           /* of the tensor after the header */
    uint32_t crc, pad;        /* crc: CRC-32C of the tensor */
} wts_hdr;

_Static_assert(sizeof(wts_hdr) == 72, "weights header layout");

static const char *const kind_name[2] = {"uk", "uv"};

static void wts_path(const char *dir, uint32_t layer, int kind, const char *suffix, char *buf,
                     size_t n)
{
    snprintf(buf, n, "%s/weights/layer-%05u-%s.bin%s", dir, layer, kind_name[kind], suffix);
}

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) ? -errno : 0;
    close(fd);
    return r;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? -errno : -ENOSPC;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One matrix into its file (atomically). */
static attnd_status save_one(attnd_engine *e, const char *dir, uint32_t layer, int kind,
                             int32_t rows, int32_t cols, attnd_dtype dtype, const void *src,
                             attnd_error *err)
{
    char tmp[PATH_MAX], path[PATH_MAX];
    const size_t bytes = (size_t)e->model.n_q_heads * (size_t)rows * (size_t)cols *
                         attnd_dtype_size(dtype);
    wts_hdr h = {.magic = WTS_MAGIC, .version = 1, .kind = (uint32_t)kind, .layer = layer,
                 .heads = (uint32_t)e->model.n_q_heads, .d_latent = e->model.d_latent,
                 .rows = rows, .cols = cols, .dtype = (int32_t)dtype, .bytes = bytes,
                 .crc = attnd__crc32c(0, src, bytes)};
    snprintf(h.model, sizeof h.model, "%s", e->model.name);
    wts_path(dir, layer, kind, ".tmp", tmp, sizeof tmp);
    wts_path(dir, layer, kind, "", path, sizeof path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int r = fd < 0 ? -errno : 0;
    if (r == 0 && (r = write_all(fd, &h, sizeof h)) == 0 && (r = write_all(fd, src, bytes)) == 0 &&
        fdatasync(fd) != 0)
        r = -errno;
    if (fd >= 0)
        close(fd);
    if (r == 0 && rename(tmp, path) != 0)
        r = -errno;
    if (r) {
        unlink(tmp);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "w_%s: cannot keep layer %u's matrix in %s/weights (--durable): "
                               "%s; nothing was loaded", kind_name[kind], layer, dir,
                               strerror(-r));
    }
    return ATTND_OK;
}

attnd_status attnd__weights_persist(attnd_engine *e, uint32_t layer, const attnd_engine_weights *w,
                                    attnd_error *err)
{
    char wdir[PATH_MAX];
    attnd_status st;
    if (!e->dur || e->recovering)
        return ATTND_OK;
    snprintf(wdir, sizeof wdir, "%s/weights", e->dur->dir);
    if (mkdir(wdir, 0755) != 0 && errno != EEXIST)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "w_uk, w_uv: cannot make %s (--durable): %s", wdir,
                               strerror(errno));
    if ((w->d_nope > 0 && (st = save_one(e, e->dur->dir, layer, 0, w->d_nope, e->model.d_latent,
                                         w->uk_dtype, w->w_uk, err))) ||
        (w->d_vo > 0 && (st = save_one(e, e->dur->dir, layer, 1, e->model.d_latent, w->d_vo,
                                       w->uv_dtype, w->w_uv, err))))
        return st;
    int r = fsync_path(wdir, O_RDONLY | O_DIRECTORY);
    if (r)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "w_uk, w_uv: cannot sync %s (--durable): %s", wdir, strerror(-r));
    return ATTND_OK;
}

/* The tensor of a file that matches this engine, or NULL (why: a warning). */
static void *read_one(attnd_engine *e, const char *path, uint32_t layer, int kind, wts_hdr *h)
{
    char model[sizeof h->model + 1];
    void *data = NULL;
    const char *why = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL; /* none kept for this layer */
    if (fread(h, sizeof *h, 1, f) != 1) {
        why = "its header is cut short";
        goto out;
    }
    memcpy(model, h->model, sizeof h->model);
    model[sizeof h->model] = '\0';
    char want[sizeof h->model];
    snprintf(want, sizeof want, "%s", e->model.name);
    const size_t esz = attnd_dtype_size((attnd_dtype)h->dtype);
    const int32_t dc = e->model.d_latent;
    const int32_t other = kind == 0 ? h->rows : h->cols;
    if (h->magic != WTS_MAGIC || h->version != 1 || h->kind != (uint32_t)kind ||
        h->layer != layer || strncmp(model, want, sizeof h->model) != 0 ||
        h->heads != (uint32_t)e->model.n_q_heads || h->d_latent != dc || esz == 0 ||
        (kind == 0 ? h->cols : h->rows) != dc || other < 1 || other > ATTND_ENGINE_MAX_PROJ_DIM ||
        h->bytes != (uint64_t)h->heads * (uint64_t)h->rows * (uint64_t)h->cols * esz) {
        why = "its header does not match this engine's model";
        goto out;
    }
    if (!(data = malloc(h->bytes ? h->bytes : 1))) {
        why = "no memory to read it";
        goto out;
    }
    if (fread(data, 1, h->bytes, f) != h->bytes || fgetc(f) != EOF) {
        why = "its size is not the header's";
        goto out;
    }
    if (attnd__crc32c(0, data, h->bytes) != h->crc)
        why = "its checksum fails";
out:
    fclose(f);
    if (why) {
        attnd_log_warn("durable", "%s: %s; W_%s of layer %u is not loaded (a heads-form Attend "
                       "on it is refused until the client loads it)",
                       path, why, kind == 0 ? "UK" : "UV", layer);
        free(data);
        return NULL;
    }
    return data;
}

void attnd__weights_restore(attnd_engine *e)
{
    char path[PATH_MAX];
    uint32_t loaded = 0;
    if (!e->dur || e->model.kind != ATTND_ATTN_MLA)
        return;
    for (uint32_t l = 0; l < (uint32_t)e->model.n_layers; l++) {
        wts_hdr h[2];
        void *t[2];
        for (int k = 0; k < 2; k++) {
            wts_path(e->dur->dir, l, k, "", path, sizeof path);
            t[k] = read_one(e, path, l, k, &h[k]);
        }
        if (!t[0] && !t[1])
            continue;
        attnd_engine_weights w = {0};
        if (t[0]) {
            w.d_nope = h[0].rows;
            w.uk_dtype = (attnd_dtype)h[0].dtype;
            w.w_uk = t[0];
        }
        if (t[1]) {
            w.d_vo = h[1].cols;
            w.uv_dtype = (attnd_dtype)h[1].dtype;
            w.w_uv = t[1];
        }
        attnd_error err;
        if (attnd__weights_load(e, l, &w, NULL, 0, &err) == ATTND_OK)
            loaded++;
        else
            attnd_log_warn("durable", "W_UK/W_UV of layer %u from %s/weights: %s", l,
                           e->dur->dir, err.msg);
        free(t[0]);
        free(t[1]);
    }
    if (loaded)
        attnd_log_info("durable", "W_UK/W_UV of %u layers loaded from %s/weights", loaded,
                       e->dur->dir);
}
