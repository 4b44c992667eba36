/* attnd-tpla-table: how far TPLA (latent-sharded MLA attention, as the
 * worker group's --shard latent computes it) is from exact attention, on
 * data of three kinds, with and without the Hadamard rotation. Not a test:
 * TPLA is an approximation whose error depends on the data, so this only
 * measures and prints it (the figures go in the README).
 *
 * Shapes are DeepSeek-V3's attention: d_c 512, d_r 64, scale 0.13523;
 * H query heads over T cached tokens; mu = 1; RoPE replicated on every
 * shard. Everything in float64. Error per head: ||o_tpla - o||_2 / ||o||_2
 * of the latent output [d_c]; the table shows its mean and max over heads.
 *
 * Data kinds (seeded; --seed S replays):
 *   random     latent, RoPE key and queries i.i.d. N(0, 1);
 *   lowrank    latents of rank 8 plus noise 0.05 and 4 outlier channels
 *              (x20), queries in the same 8-dim subspace: the structure real
 *              MLA latents show;
 *   needle     random latents, queries sharing a common direction g, and one
 *              token (at T/3) whose latent is 3 g: attention is dominated by
 *              one token (retrieval-style).
 *
 * Shards 1 is the sanity row: one shard is exact attention (error ~1e-16).
 *
 * usage: attnd-tpla-table [--heads H] [--tokens T] [--seed S]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define DC 512
#define DR 64
#define DK (DC + DR)
static const double SCALE = 0.1352337788608801;

static void fwht(double *x, int n)
{
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                double a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    for (int i = 0; i < n; i++)
        x[i] /= sqrt((double)n);
}

/* Attention of one head over T tokens using latent dims [d0, d1) for the
 * score and output (plus the whole RoPE part for the score); writes
 * out[d0..d1). */
static void attend_slice(const double *q, const double *kv, int T, int d0, int d1, double *out,
                         double *p)
{
    double mx = -INFINITY, sum = 0.0;
    for (int t = 0; t < T; t++) {
        const double *k = kv + (size_t)t * DK;
        double s = 0.0;
        for (int d = d0; d < d1; d++)
            s += q[d] * k[d];
        for (int d = DC; d < DK; d++)
            s += q[d] * k[d];
        p[t] = SCALE * s;
        mx = p[t] > mx ? p[t] : mx;
    }
    for (int d = d0; d < d1; d++)
        out[d] = 0.0;
    for (int t = 0; t < T; t++) {
        double w = exp(p[t] - mx);
        sum += w;
        for (int d = d0; d < d1; d++)
            out[d] += w * kv[(size_t)t * DK + d];
    }
    for (int d = d0; d < d1; d++)
        out[d] /= sum;
}

static void make_data(const char *kind, tu_rng *r, int H, int T, double *q, double *kv)
{
    for (size_t i = 0; i < (size_t)T * DK; i++)
        kv[i] = tu_normal(r);
    for (size_t i = 0; i < (size_t)H * DK; i++)
        q[i] = tu_normal(r);
    if (strcmp(kind, "lowrank") == 0) {
        static double u[8][DC];
        static const int outl[4] = {3, 77, 200, 401};
        for (int j = 0; j < 8; j++)
            for (int d = 0; d < DC; d++)
                u[j][d] = tu_normal(r);
        for (int t = 0; t < T; t++) {
            double a[8];
            for (int j = 0; j < 8; j++)
                a[j] = tu_normal(r) / sqrt(8.0);
            for (int d = 0; d < DC; d++) {
                double v = 0.05 * tu_normal(r);
                for (int j = 0; j < 8; j++)
                    v += a[j] * u[j][d];
                kv[(size_t)t * DK + d] = v;
            }
            for (int o = 0; o < 4; o++)
                kv[(size_t)t * DK + outl[o]] = 20.0 * tu_normal(r);
        }
        for (int h = 0; h < H; h++)
            for (int d = 0; d < DC; d++) {
                double v = 0.0;
                for (int j = 0; j < 8; j++)
                    v += tu_normal(r) / sqrt(8.0) * u[j][d];
                q[(size_t)h * DK + d] = v;
            }
    } else if (strcmp(kind, "needle") == 0) {
        double g[DC], n2 = 0.0;
        for (int d = 0; d < DC; d++) {
            g[d] = tu_normal(r);
            n2 += g[d] * g[d];
        }
        for (int d = 0; d < DC; d++)
            g[d] /= sqrt(n2 / DC); /* |g| = sqrt(DC) */
        for (int h = 0; h < H; h++)
            for (int d = 0; d < DC; d++)
                q[(size_t)h * DK + d] = 0.5 * q[(size_t)h * DK + d] + 0.5 * g[d] / sqrt(DC) * 4;
        for (int d = 0; d < DC; d++)
            kv[(size_t)(T / 3) * DK + d] = 3.0 * g[d] / sqrt(DC) * 4;
    }
}

int main(int argc, char **argv)
{
    int H = 16, T = 2048;
    uint64_t seed = 20261201;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--heads") == 0)
            H = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--tokens") == 0)
            T = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seed") == 0)
            seed = strtoull(argv[i + 1], NULL, 0);
        else {
            fprintf(stderr, "usage: attnd-tpla-table [--heads H] [--tokens T] [--seed S]\n");
            return 2;
        }
    }
    if (H < 1 || T < 4) {
        fprintf(stderr, "attnd-tpla-table: --heads >= 1 and --tokens >= 4\n");
        return 2;
    }
    static const char *kinds[] = {"random", "lowrank", "needle"};
    static const int shards[] = {1, 2, 4, 8};
    double *q = malloc(sizeof(double) * (size_t)H * DK), *kv = malloc(sizeof(double) * T * DK);
    double *qr = malloc(sizeof(double) * (size_t)H * DK), *kvr = malloc(sizeof(double) * T * DK);
    double *p = malloc(sizeof(double) * T), exact[DC], o[DC];
    if (!q || !kv || !qr || !kvr || !p)
        return 1;
    printf("TPLA relative error vs exact attention (d_c %d, d_r %d replicated, H %d, T %d, "
           "mu 1, seed %llu)\n", DC, DR, H, T, (unsigned long long)seed);
    printf("| data    | shards | rotation | mean rel err | max rel err |\n");
    printf("|---------|--------|----------|--------------|-------------|\n");
    for (int k = 0; k < 3; k++) {
        tu_rng r = {seed + (uint64_t)k};
        make_data(kinds[k], &r, H, T, q, kv);
        memcpy(qr, q, sizeof(double) * (size_t)H * DK);
        memcpy(kvr, kv, sizeof(double) * (size_t)T * DK);
        for (int h = 0; h < H; h++)
            fwht(qr + (size_t)h * DK, DC);
        for (int t = 0; t < T; t++)
            fwht(kvr + (size_t)t * DK, DC);
        for (int si = 0; si < 4; si++)
            for (int rot = 1; rot >= 0; rot--) {
                int N = shards[si];
                double sum = 0.0, worst = 0.0;
                for (int h = 0; h < H; h++) {
                    attend_slice(q + (size_t)h * DK, kv, T, 0, DC, exact, p);
                    const double *qq = (rot ? qr : q) + (size_t)h * DK;
                    for (int s = 0; s < N; s++)
                        attend_slice(qq, rot ? kvr : kv, T, s * DC / N, (s + 1) * DC / N, o, p);
                    if (rot)
                        fwht(o, DC);
                    double num = 0.0, den = 0.0;
                    for (int d = 0; d < DC; d++) {
                        num += (o[d] - exact[d]) * (o[d] - exact[d]);
                        den += exact[d] * exact[d];
                    }
                    double e = sqrt(num / den);
                    sum += e;
                    worst = e > worst ? e : worst;
                }
                printf("| %-7s | %6d | %-8s | %12.4f | %11.4f |\n", kinds[k], N,
                       rot ? "on" : "off", sum / H, worst);
            }
    }
    free(q);
    free(kv);
    free(qr);
    free(kvr);
    free(p);
    return 0;
}
