/* attnd-sparse-accuracy --load: captured attention (the file format in
 * accuracy.h, written by tests/gpu/capture_attn.py from a Hugging Face
 * model) through the same evaluation as the synthetic workloads.
 *
 * Every record's header is checked before anything is evaluated (its
 * shape against sane limits, its payload against the bytes the file has
 * left, nothing after the last record); each record's query contexts
 * (1..T) and values (finite) as it is read. A bad file is refused with a
 * message naming the record and the field (what a wrong writer or a cut
 * copy produces). Keys and values are rounded to bf16 as the pool
 * stores them; queries stay float32 as the wire carries them. Each KV head
 * (or the latent) with its query heads, at each query's context, is one
 * case; a record's table sums its KV heads and queries, the file's table
 * all records. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "accuracy.h"
#include "attnd_kernels.h"

#define ACC_MAGIC "ATTNDQKV"
#define ACC_VERSION 1u
#define ACC_FLAG_LATENT 1u
/* sanity limits: a header past them is a wrong writer, not a model */
#define ACC_MAX_HEADS 4096u
#define ACC_MAX_DIM 8192u
#define ACC_MAX_T (1u << 24)
#define ACC_MAX_QUERIES 65536u

typedef struct rec_hdr {
    uint32_t hq, hkv, T, dk, dv, nq, flags;
    float scale;
    int32_t layer;
} rec_hdr;

static uint32_t le32(const unsigned char *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static float lef32(const unsigned char *b)
{
    uint32_t u = le32(b);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Check a record header; its payload bytes into *bytes_p. */
static attnd_status rec_check(const unsigned char *b, uint32_t r, rec_hdr *h, uint64_t *bytes_p,
                              attnd_error *err)
{
    h->hq = le32(b), h->hkv = le32(b + 4), h->T = le32(b + 8), h->dk = le32(b + 12);
    h->dv = le32(b + 16), h->nq = le32(b + 20), h->flags = le32(b + 24);
    h->scale = lef32(b + 28), h->layer = (int32_t)le32(b + 32);
    const attnd_status bad = ATTND_ERR_INVALID_ARGUMENT;
    if (h->hq == 0 || h->hq > ACC_MAX_HEADS)
        return attnd_error_set(err, bad, "record %u: n_q_heads %u out of 1..%u", r, h->hq,
                               ACC_MAX_HEADS);
    if (h->hkv == 0 || h->hq % h->hkv)
        return attnd_error_set(err, bad, "record %u: n_kv_heads %u does not divide n_q_heads %u",
                               r, h->hkv, h->hq);
    if (h->T == 0 || h->T > ACC_MAX_T)
        return attnd_error_set(err, bad, "record %u: T %u out of 1..%u", r, h->T, ACC_MAX_T);
    if (h->dk == 0 || h->dk > ACC_MAX_DIM)
        return attnd_error_set(err, bad, "record %u: d_k %u out of 1..%u", r, h->dk, ACC_MAX_DIM);
    if (h->dv == 0 || h->dv > ACC_MAX_DIM)
        return attnd_error_set(err, bad, "record %u: d_v %u out of 1..%u", r, h->dv, ACC_MAX_DIM);
    if (h->nq == 0 || h->nq > ACC_MAX_QUERIES)
        return attnd_error_set(err, bad, "record %u: n_queries %u out of 1..%u", r, h->nq,
                               ACC_MAX_QUERIES);
    if (h->flags & ~ACC_FLAG_LATENT)
        return attnd_error_set(err, bad, "record %u: flags 0x%x has unknown bits", r, h->flags);
    if ((h->flags & ACC_FLAG_LATENT) && h->dv > h->dk)
        return attnd_error_set(err, bad, "record %u: LATENT with d_v %u > d_k %u", r, h->dv,
                               h->dk);
    if (!isfinite(h->scale) || h->scale <= 0)
        return attnd_error_set(err, bad, "record %u: scale %g is not a positive number", r,
                               (double)h->scale);
    for (int i = 9; i < 16; i++)
        if (le32(b + 4 * i))
            return attnd_error_set(err, bad, "record %u: header word %d is not zero", r, i);
    uint64_t kv = (uint64_t)h->hkv * h->T * h->dk;
    if (!(h->flags & ACC_FLAG_LATENT))
        kv += (uint64_t)h->hkv * h->T * h->dv;
    *bytes_p = 4 * (kv + h->nq + (uint64_t)h->nq * h->hq * h->dk);
    return ATTND_OK;
}

/* n float32 from f into dst, all finite ("what" names the array). */
static attnd_status read_f32(FILE *f, float *dst, uint64_t n, uint32_t r, const char *what,
                             attnd_error *err)
{
    if (fread(dst, sizeof(float), (size_t)n, f) != (size_t)n)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "record %u: %s cut short", r,
                               what);
    for (uint64_t i = 0; i < n; i++) {
        unsigned char b[4];
        memcpy(b, &dst[i], 4);
        dst[i] = lef32(b);
        if (!isfinite(dst[i]))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "record %u: %s[%llu] is not finite", r, what,
                                   (unsigned long long)i);
    }
    return ATTND_OK;
}

static double bf16_round(float x)
{
    return attnd_dtype_bf16_to_f32(attnd_dtype_f32_to_bf16(x));
}

/* Evaluate one checked record (its arrays read) into rec and all. */
static attnd_status rec_eval(const rec_hdr *h, const float *K, const float *V,
                             const uint32_t *ctx, const float *Q, const attnd__acc_opts *opts,
                             int32_t agg_opt, attnd__acc_table *rec, attnd_error *err)
{
    const uint32_t G = h->hq / h->hkv, latent = h->flags & ACC_FLAG_LATENT;
    attnd__acc_opts o = *opts;
    o.head_agg = attnd__acc_default_agg((int32_t)G, agg_opt);
    attnd_status st = ATTND_ERR_RESOURCE_EXHAUSTED;
    double *k = malloc(sizeof(double) * (size_t)h->T * h->dk);
    double *v = latent ? k : malloc(sizeof(double) * (size_t)h->T * h->dv);
    double *q = malloc(sizeof(double) * (size_t)G * h->dk);
    if (!k || !v || !q) {
        attnd_error_set(err, st, "out of memory");
        goto err_alloc;
    }
    for (uint32_t g = 0; g < h->hkv; g++) {
        const float *kg = K + (size_t)g * h->T * h->dk;
        for (size_t i = 0; i < (size_t)h->T * h->dk; i++)
            k[i] = bf16_round(kg[i]);
        if (!latent)
            for (size_t i = 0; i < (size_t)h->T * h->dv; i++)
                v[i] = bf16_round(V[(size_t)g * h->T * h->dv + i]);
        for (uint32_t j = 0; j < h->nq; j++) {
            const float *qj = Q + ((size_t)j * h->hq + (size_t)g * G) * h->dk;
            for (size_t i = 0; i < (size_t)G * h->dk; i++)
                q[i] = qj[i];
            attnd__acc_case c = {.T = ctx[j], .hq = (int32_t)G, .dk = (int32_t)h->dk,
                                 .dv = (int32_t)h->dv, .v_in_k = (int32_t)latent,
                                 .scale = h->scale, .k = k, .v = v, .q = q};
            st = attnd__acc_eval(&c, &o, rec, err);
            if (st != ATTND_OK)
                goto err_alloc;
        }
    }
    st = ATTND_OK;
err_alloc:
    if (v != k)
        free(v);
    free(k);
    free(q);
    return st;
}

/* Walk the n_rec record headers from offset 16 (a file of size bytes):
 * each checked, each payload within the file, nothing after the last. */
static attnd_status scan(FILE *f, uint64_t size, uint32_t n_rec, attnd_error *err)
{
    const attnd_status bad = ATTND_ERR_INVALID_ARGUMENT;
    uint64_t off = 16;
    for (uint32_t r = 0; r < n_rec; r++) {
        unsigned char hb[64];
        rec_hdr h;
        uint64_t bytes;
        attnd_status st;
        if (size - off < 64 || fseeko(f, (off_t)off, SEEK_SET) != 0 || fread(hb, 1, 64, f) != 64)
            return attnd_error_set(err, bad,
                                   "file size %llu: record %u's header at offset %llu is cut "
                                   "short (%u records announced)",
                                   (unsigned long long)size, r, (unsigned long long)off, n_rec);
        if ((st = rec_check(hb, r, &h, &bytes, err)) != ATTND_OK)
            return st;
        off += 64;
        if (size - off < bytes)
            return attnd_error_set(err, bad,
                                   "file size %llu: record %u needs %llu bytes at offset %llu, "
                                   "%llu are left (truncated, or a wrong shape)",
                                   (unsigned long long)size, r, (unsigned long long)bytes,
                                   (unsigned long long)off, (unsigned long long)(size - off));
        off += bytes;
    }
    if (off != size)
        return attnd_error_set(err, bad, "file size %llu: %llu bytes after the last of %u records",
                               (unsigned long long)size, (unsigned long long)(size - off), n_rec);
    return fseeko(f, 16, SEEK_SET) == 0 ? ATTND_OK
                                         : attnd_error_set(err, bad, "cannot seek in the file");
}

attnd_status attnd__acc_load_file(const char *path, const attnd__acc_opts *opts, int32_t agg_opt,
                                  FILE *out, attnd_error *err)
{
    const attnd_status bad = ATTND_ERR_INVALID_ARGUMENT;
    attnd_status st = ATTND_OK;
    float *K = NULL, *V = NULL, *Q = NULL;
    uint32_t *ctx = NULL;
    attnd__acc_table all;
    memset(&all, 0, sizeof all);
    FILE *f = fopen(path, "rb");
    if (!f)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "cannot open %s", path);
    struct stat sb;
    unsigned char hb[64];
    if (fstat(fileno(f), &sb) != 0) {
        st = attnd_error_set(err, ATTND_ERR_NOT_FOUND, "cannot stat %s", path);
        goto err_open;
    }
    const uint64_t size = (uint64_t)sb.st_size;
    if (size < 16 || fread(hb, 1, 16, f) != 16) {
        st = attnd_error_set(err, bad, "file is %llu bytes, shorter than the 16-byte file header",
                             (unsigned long long)size);
        goto err_open;
    }
    if (memcmp(hb, ACC_MAGIC, 8)) {
        st = attnd_error_set(err, bad, "bad magic: not an attnd captured workload (\"%s\")",
                             ACC_MAGIC);
        goto err_open;
    }
    if (le32(hb + 8) != ACC_VERSION) {
        st = attnd_error_set(err, bad, "version %u (this reader knows %u)", le32(hb + 8),
                             ACC_VERSION);
        goto err_open;
    }
    const uint32_t n_rec = le32(hb + 12);
    if (n_rec == 0) {
        st = attnd_error_set(err, bad, "n_records is 0");
        goto err_open;
    }
    if ((st = scan(f, size, n_rec, err)) != ATTND_OK)
        goto err_open;
    for (uint32_t r = 0; r < n_rec; r++) {
        rec_hdr h;
        uint64_t bytes;
        if (fread(hb, 1, 64, f) != 64) {
            st = attnd_error_set(err, bad, "record %u: header cut short", r);
            goto err_open;
        }
        if ((st = rec_check(hb, r, &h, &bytes, err)) != ATTND_OK)
            goto err_open;
        const int latent = (h.flags & ACC_FLAG_LATENT) != 0;
        const uint64_t nk = (uint64_t)h.hkv * h.T * h.dk, nv = (uint64_t)h.hkv * h.T * h.dv;
        const uint64_t nqf = (uint64_t)h.nq * h.hq * h.dk;
        K = malloc(sizeof(float) * (size_t)nk);
        V = latent ? NULL : malloc(sizeof(float) * (size_t)nv);
        ctx = malloc(sizeof(uint32_t) * h.nq);
        Q = malloc(sizeof(float) * (size_t)nqf);
        if (!K || (!latent && !V) || !ctx || !Q) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "record %u: out of memory", r);
            goto err_open;
        }
        if ((st = read_f32(f, K, nk, r, "K", err)) != ATTND_OK ||
            (!latent && (st = read_f32(f, V, nv, r, "V", err)) != ATTND_OK))
            goto err_open;
        unsigned char cb[4];
        for (uint32_t j = 0; j < h.nq; j++) {
            if (fread(cb, 1, 4, f) != 4) {
                st = attnd_error_set(err, bad, "record %u: ctx cut short", r);
                goto err_open;
            }
            ctx[j] = le32(cb);
            if (ctx[j] == 0 || ctx[j] > h.T) {
                st = attnd_error_set(err, bad, "record %u: ctx[%u] = %u out of 1..T (%u)", r, j,
                                     ctx[j], h.T);
                goto err_open;
            }
        }
        if ((st = read_f32(f, Q, nqf, r, "Q", err)) != ATTND_OK)
            goto err_open;
        attnd__acc_table rec;
        memset(&rec, 0, sizeof rec);
        if ((st = rec_eval(&h, K, V, ctx, Q, opts, agg_opt, &rec, err)) != ATTND_OK)
            goto err_open;
        char label[48];
        snprintf(label, sizeof label, "layer %d", h.layer);
        fprintf(out,
                "\nrecord %u: layer %d, %s, %u query heads on %u KV head%s, d_k %u, d_v %u, scale "
                "%.5g, %u tokens, %u quer%s (context %u..%u); topk-pages rows: runs of %d heads\n\n",
                r, h.layer, latent ? "MLA latent" : "GQA", h.hq, h.hkv, h.hkv == 1 ? "" : "s",
                h.dk, h.dv,
                (double)h.scale, h.T, h.nq, h.nq == 1 ? "y" : "ies", ctx[0], ctx[h.nq - 1],
                attnd__acc_default_agg((int32_t)(h.hq / h.hkv), agg_opt));
        attnd__acc_print(out, label, &rec, 1);
        fflush(out);
        for (int p = 0; p < ATTND__ACC_NPOL; p++)
            for (int b = 0; b < ATTND__ACC_NB; b++) {
                attnd__acc *x = &all.a[p][b];
                const attnd__acc *y = &rec.a[p][b];
                if (x->n == 0 || y->recall_min < x->recall_min)
                    x->recall_min = y->recall_min;
                if (x->n == 0 || y->err_max > x->err_max)
                    x->err_max = y->err_max;
                x->recall += y->recall, x->err += y->err, x->bytes += y->bytes, x->n += y->n;
            }
        free(K), free(V), free(ctx), free(Q);
        K = V = Q = NULL;
        ctx = NULL;
    }
    if (n_rec > 1) {
        fprintf(out, "\nall %u records of %s:\n\n", n_rec, path);
        attnd__acc_print(out, "all", &all, 1);
    }
err_open:
    free(K), free(V), free(ctx), free(Q);
    fclose(f);
    return st;
}
