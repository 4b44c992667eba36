/* From the service config to the worker group's: the rank list (from
 * --group or --group-file), the sharding mode and its TPLA settings, the
 * group secret (--group-secret-file) and the shard of the model this
 * rank's engine serves. Kept apart from config.c (which only fills
 * fields) because it knows the group's rules.
 *
 * The group secret: the file's bytes, less trailing whitespace (so that
 * "openssl rand -hex 32 > f" and an editor's newline give the same
 * secret), at least SECRET_MIN of them; the group's key is their SHA-256,
 * so any length up to SECRET_MAX works the same. A file that others may
 * read is warned about (it lets its reader join the group). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "attnd_log.h"
#include "srv.h"

#define SECRET_MIN 16
#define SECRET_MAX 4096

/* Append one "host:port" entry (trimmed) to gcfg. */
static attnd_status add_entry(attnd_group_config *g, const char *s, size_t n, const char *who,
                              attnd_error *err)
{
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    if (n == 0)
        return ATTND_OK;
    if (g->size >= ATTND_GROUP_MAX_RANKS)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "%s: more than %d ranks", who,
                               ATTND_GROUP_MAX_RANKS);
    if (n >= ATTND_GROUP_ADDR_MAX || !memchr(s, ':', n))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: entry %d \"%.*s\" is not HOST:PORT", who, g->size,
                               (int)(n < 64 ? n : 64), s);
    memcpy(g->addrs[g->size], s, n);
    g->addrs[g->size][n] = '\0';
    g->size++;
    return ATTND_OK;
}

static attnd_status read_group_file(attnd_group_config *g, const char *path, attnd_error *err)
{
    char line[512];
    attnd_status st = ATTND_OK;
    FILE *f = fopen(path, "r");
    if (!f)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--group-file: %s: %s", path,
                               strerror(errno));
    while (st == ATTND_OK && fgets(line, sizeof line, f))
        if (line[0] != '#')
            st = add_entry(g, line, strlen(line), "--group-file", err);
    fclose(f);
    return st;
}

/* --group-secret-file path -> g->secret (the SHA-256 of its contents). */
static attnd_status read_group_secret(attnd_group_config *g, const char *path, attnd_error *err)
{
    unsigned char buf[SECRET_MAX + 1];
    struct stat sb;
    attnd_status st = ATTND_OK;
    size_t n;
    FILE *f = fopen(path, "re");

    if (!f)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--group-secret-file %s: %s",
                               path, strerror(errno));
    if (fstat(fileno(f), &sb) == 0 && (sb.st_mode & 077))
        attnd_log_warn("group", "--group-secret-file %s can be read by other users (mode %03o): "
                       "whoever reads it can join the group", path, sb.st_mode & 0777);
    n = fread(buf, 1, sizeof buf, f);
    if (ferror(f))
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--group-secret-file %s: read "
                             "error", path);
    else if (n > SECRET_MAX)
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--group-secret-file %s: longer "
                             "than %d bytes", path, SECRET_MAX);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                 buf[n - 1] == '\t'))
        n--;
    if (st == ATTND_OK && n < SECRET_MIN)
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--group-secret-file %s: %zu "
                             "bytes, expected at least %d (e.g. openssl rand -hex 32)", path, n,
                             SECRET_MIN);
    if (st == ATTND_OK) {
        SHA256(buf, n, g->secret);
        g->has_secret = 1;
    }
    OPENSSL_cleanse(buf, sizeof buf);
    fclose(f);
    return st;
}

attnd_status attnd_srv_config_group(const attnd_srv_config *cfg, attnd_engine_config *ecfg,
                                    attnd_group_config *g, int *enabled_p, attnd_error *err)
{
    attnd_status st;
    char *end;

    *enabled_p = 0;
    /* --print-config shows the path and reads nothing (as --token-file) */
    if (!cfg->group[0] && !cfg->group_file[0])
        return cfg->group_secret_file[0] && !cfg->print_config
                   ? attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                     "--group-secret-file: only for a group rank (--group)")
                   : ATTND_OK;
    if (cfg->group[0] && cfg->group_file[0])
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--group and --group-file: give one of them");
    memset(g, 0, sizeof *g);
    if (cfg->group[0]) {
        const char *s = cfg->group;
        for (;;) {
            const char *comma = strchr(s, ',');
            size_t n = comma ? (size_t)(comma - s) : strlen(s);
            if ((st = add_entry(g, s, n, "--group", err)))
                return st;
            if (!comma)
                break;
            s = comma + 1;
        }
    } else if ((st = read_group_file(g, cfg->group_file, err))) {
        return st;
    }
    if (g->size < 1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--group: no ranks listed");
    g->rank = cfg->rank;
    int mode = attnd_group_mode_parse(cfg->shard);
    if (mode < 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--shard: expected sequence, head or latent, got \"%s\"",
                               cfg->shard);
    g->mode = (attnd_group_mode)mode;
    if (strcmp(cfg->tpla_rope, "split") == 0)
        g->rope_split = 1;
    else if (strcmp(cfg->tpla_rope, "replicate") != 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--tpla-rope: expected replicate or split, got \"%s\"",
                               cfg->tpla_rope);
    errno = 0;
    g->mu = strtof(cfg->tpla_mu, &end);
    if (errno || end == cfg->tpla_mu || *end || !isfinite(g->mu) || g->mu <= 0.0f)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--tpla-mu: expected a positive number, got \"%s\"",
                               cfg->tpla_mu);
    snprintf(g->addr_dir, sizeof g->addr_dir, "%s", cfg->group_dir);
    g->connect_ms = cfg->group_connect_ms;
    g->timeout_ms = cfg->group_timeout_ms;
    g->model = ecfg->model;
    g->page_size = ecfg->page_size;
    if ((st = attnd_group_shard_model(g, &ecfg->model, err)))
        return st;
    /* a durable rank's files say whose shard they hold */
    ecfg->shard_tag = (uint32_t)g->size << 16 | (uint32_t)(g->rank + 1) << 8 | (uint32_t)g->mode;
    if (cfg->group_secret_file[0] && !cfg->print_config &&
        (st = read_group_secret(g, cfg->group_secret_file, err)))
        return st;
    *enabled_p = 1;
    return ATTND_OK;
}
