/* Tenants, their tokens, and the check every call passes (auth.h).
 *
 * The token file, one tenant per line ('#' starts a comment):
 *
 *     TOKEN          TENANT [admin] [sessions=N] [kv=BYTES]
 *     cert:IDENTITY  TENANT [...]
 *
 * TOKEN is at least ATTND_SRV_TOKEN_MIN printable characters; a tenant may
 * have several lines (several tokens, certificates), whose options must not
 * contradict each other. "cert:IDENTITY" admits an mTLS client whose
 * certificate carries IDENTITY as gRPC reports it (its subject alternative
 * names, else its common name). Messages about the file name the line,
 * never the token.
 *
 * The lookup on every call: the token's bytes pick a slot of an
 * open-addressing table (FNV-1a), and a candidate of the same length is
 * compared in constant time (CRYPTO_memcmp), so neither the comparison's
 * time nor anything the call allocates depends on how much of a token is
 * right. A reload builds a new table and swaps it under the write lock;
 * calls read under the read lock. Tenants are never freed while the table
 * lives: calls keep pointers to them.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "attnd_log.h"
#include "srv.h"

#define LINE_MAX_BYTES 4096
#define TENANTS_MAX 4096

typedef struct token_ent {
    char *token; /* NULL: empty slot */
    size_t len;
    attnd_srv_tenant *t;
} token_ent;

typedef struct cert_ent {
    char *identity;
    attnd_srv_tenant *t;
} cert_ent;

/* One generation of the file: what a reload replaces whole. */
typedef struct gen {
    token_ent *tokens; /* open addressing, cap a power of two */
    uint32_t cap, n_tokens;
    cert_ent *certs;
    size_t n_certs;
} gen;

struct attnd_srv_auth {
    char path[4096];
    uint64_t default_sessions, default_kv;
    pthread_rwlock_t lock; /* guards cur and the tenants' reloadable fields */
    gen *cur;
    attnd_srv_tenant **tenants; /* every tenant ever listed */
    size_t n_tenants;
};

uint64_t attnd_srv_tenant_tag(const char *name)
{
    static const char prefix[] = "attnd tenant";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    uint64_t tag = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
        EVP_DigestUpdate(ctx, prefix, sizeof prefix) &&
        EVP_DigestUpdate(ctx, name, strlen(name)) && EVP_DigestFinal_ex(ctx, md, &n) && n >= 8)
        memcpy(&tag, md, sizeof tag);
    EVP_MD_CTX_free(ctx);
    return tag ? tag : 1;
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static void gen_free(gen *g)
{
    if (!g)
        return;
    for (uint32_t i = 0; i < g->cap; i++)
        if (g->tokens[i].token) {
            OPENSSL_cleanse(g->tokens[i].token, g->tokens[i].len);
            free(g->tokens[i].token);
        }
    for (size_t i = 0; i < g->n_certs; i++)
        free(g->certs[i].identity);
    free(g->tokens);
    free(g->certs);
    free(g);
}

/* The slot of token (or the empty one where it would go). */
static token_ent *slot_of(const gen *g, const char *tok, size_t len)
{
    uint32_t i = (uint32_t)fnv1a(tok, len) & (g->cap - 1);
    for (;;) {
        token_ent *e = &g->tokens[i];
        if (!e->token || (e->len == len && CRYPTO_memcmp(e->token, tok, len) == 0))
            return e;
        i = (i + 1) & (g->cap - 1);
    }
}

/* ---- parsing ------------------------------------------------------------------------ */

/* What the file says about one tenant, merged over its lines. */
typedef struct spec {
    char name[ATTND_SRV_TENANT_NAME_MAX];
    int admin;
    int64_t sessions, kv; /* -1: not given */
} spec;

typedef struct parsed {
    spec *specs;
    size_t n_specs;
    struct pline {
        char *key; /* token, or "cert:..." */
        size_t spec;
    } *lines;
    size_t n_lines;
} parsed;

static void parsed_free(parsed *p)
{
    for (size_t i = 0; i < p->n_lines; i++) {
        OPENSSL_cleanse(p->lines[i].key, strlen(p->lines[i].key));
        free(p->lines[i].key);
    }
    free(p->lines);
    free(p->specs);
    memset(p, 0, sizeof *p);
}

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= ATTND_SRV_TENANT_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

static int token_ok(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~')
            return 0;
    return n >= ATTND_SRV_TOKEN_MIN;
}

/* Merge option `opt` of line `ln` into sp. */
static attnd_status apply_opt(const char *path, int ln, spec *sp, const char *opt,
                              attnd_error *err)
{
    int64_t *field = NULL, v;
    uint64_t u;
    const char *eq = strchr(opt, '=');

    if (strcmp(opt, "admin") == 0) {
        sp->admin = 1;
        return ATTND_OK;
    }
    if (eq && (size_t)(eq - opt) == 8 && strncmp(opt, "sessions", 8) == 0) {
        char *end;
        errno = 0;
        long long x = strtoll(eq + 1, &end, 10);
        if (errno || end == eq + 1 || *end || x < 0)
            goto bad;
        field = &sp->sessions;
        v = x;
    } else if (eq && (size_t)(eq - opt) == 2 && strncmp(opt, "kv", 2) == 0) {
        if (attnd_srv_parse_size(eq + 1, &u) || u > INT64_MAX)
            goto bad;
        field = &sp->kv;
        v = (int64_t)u;
    } else {
        goto bad;
    }
    if (*field >= 0 && *field != v)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--token-file %s line %d: tenant %s: %.*s given twice with "
                               "different values", path, ln, sp->name, (int)(eq - opt), opt);
    *field = v;
    return ATTND_OK;
bad:
    return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                           "--token-file %s line %d: unknown option \"%.40s\" (expected admin, "
                           "sessions=N or kv=BYTES)", path, ln, opt);
}

static attnd_status parse_line(const char *path, int ln, char *line, parsed *p,
                               attnd_error *err)
{
    char *save = NULL, *key, *name, *opt;
    size_t i;

    if ((opt = strchr(line, '#')))
        *opt = '\0';
    if (!(key = strtok_r(line, " \t\r\n", &save)))
        return ATTND_OK; /* blank */
    if (!(name = strtok_r(NULL, " \t\r\n", &save)))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--token-file %s line %d: expected \"TOKEN TENANT [options]\"",
                               path, ln);
    if (!name_ok(name))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--token-file %s line %d: tenant name \"%.64s\" is not 1 to %d "
                               "of A-Z a-z 0-9 . _ -", path, ln, name,
                               ATTND_SRV_TENANT_NAME_MAX - 1);
    if (strncmp(key, "cert:", 5) == 0 ? key[5] == '\0' : !token_ok(key))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--token-file %s line %d: the token must be at least %d "
                               "printable characters without spaces (or cert:IDENTITY)",
                               path, ln, ATTND_SRV_TOKEN_MIN);
    for (i = 0; i < p->n_lines; i++)
        if (strcmp(p->lines[i].key, key) == 0)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "--token-file %s line %d: the same %s as an earlier line",
                                   path, ln, key[0] == 'c' && !strncmp(key, "cert:", 5)
                                                 ? "certificate identity" : "token");
    for (i = 0; i < p->n_specs && strcmp(p->specs[i].name, name) != 0; i++)
        ;
    if (i == p->n_specs) {
        if (p->n_specs >= TENANTS_MAX)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "--token-file %s line %d: more than %d tenants", path, ln,
                                   TENANTS_MAX);
        spec *ns = realloc(p->specs, (p->n_specs + 1) * sizeof *ns);
        if (!ns)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--token-file: no memory");
        p->specs = ns;
        memset(&ns[i], 0, sizeof ns[i]);
        snprintf(ns[i].name, sizeof ns[i].name, "%s", name);
        ns[i].sessions = ns[i].kv = -1;
        p->n_specs++;
    }
    while ((opt = strtok_r(NULL, " \t\r\n", &save))) {
        attnd_status st = apply_opt(path, ln, &p->specs[i], opt, err);
        if (st)
            return st;
    }
    struct pline *nl = realloc(p->lines, (p->n_lines + 1) * sizeof *nl);
    if (!nl)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--token-file: no memory");
    p->lines = nl;
    if (!(nl[p->n_lines].key = strdup(key)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--token-file: no memory");
    nl[p->n_lines].spec = i;
    p->n_lines++;
    return ATTND_OK;
}

static attnd_status parse_file(const char *path, parsed *p, attnd_error *err)
{
    char line[LINE_MAX_BYTES];
    struct stat sb;
    attnd_status st = ATTND_OK;
    int ln = 0;
    FILE *f = fopen(path, "re");

    memset(p, 0, sizeof *p);
    if (!f)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--token-file %s: %s", path,
                               strerror(errno));
    if (fstat(fileno(f), &sb) == 0 && (sb.st_mode & 077))
        attnd_log_warn("auth", "--token-file %s can be read by other users (mode %03o): it "
                       "holds every tenant's secret", path, sb.st_mode & 0777);
    while (st == ATTND_OK && fgets(line, sizeof line, f)) {
        ln++;
        if (!strchr(line, '\n') && !feof(f))
            st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                 "--token-file %s line %d: longer than %d bytes", path, ln,
                                 LINE_MAX_BYTES - 2);
        else
            st = parse_line(path, ln, line, p, err);
    }
    OPENSSL_cleanse(line, sizeof line);
    if (st == ATTND_OK && ferror(f))
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--token-file %s: read error",
                             path);
    fclose(f);
    if (st)
        parsed_free(p);
    return st;
}

/* ---- building a generation ---------------------------------------------------------- */

/* The tenant named like sp, made (and listed in a) if new. Caller holds
 * the write lock (or a is not shared yet). */
static attnd_srv_tenant *tenant_for(attnd_srv_auth *a, const spec *sp)
{
    for (size_t i = 0; i < a->n_tenants; i++)
        if (strcmp(a->tenants[i]->name, sp->name) == 0)
            return a->tenants[i];
    attnd_srv_tenant **nt = realloc(a->tenants, (a->n_tenants + 1) * sizeof *nt);
    if (!nt)
        return NULL;
    a->tenants = nt;
    attnd_srv_tenant *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    snprintf(t->name, sizeof t->name, "%s", sp->name);
    t->tag = attnd_srv_tenant_tag(t->name);
    atomic_init(&t->errors, 0);
    nt[a->n_tenants++] = t;
    return t;
}

/* Build the generation of p (tenants made as needed; their reloadable
 * fields are set by commit(), once the whole file is known good). */
static attnd_status build(attnd_srv_auth *a, const parsed *p, attnd_srv_tenant **by_spec,
                          gen **g_p, attnd_error *err)
{
    gen *g = calloc(1, sizeof *g);
    size_t n_tok = 0;

    if (!g)
        goto oom;
    for (size_t i = 0; i < p->n_specs; i++)
        if (!(by_spec[i] = tenant_for(a, &p->specs[i])))
            goto oom;
    for (size_t i = 0; i < p->n_lines; i++)
        n_tok += strncmp(p->lines[i].key, "cert:", 5) != 0;
    g->cap = 16;
    while (g->cap < 2 * n_tok + 2)
        g->cap <<= 1;
    if (!(g->tokens = calloc(g->cap, sizeof *g->tokens)) ||
        (p->n_lines && !(g->certs = calloc(p->n_lines, sizeof *g->certs))))
        goto oom;
    for (size_t i = 0; i < p->n_lines; i++) {
        const char *key = p->lines[i].key;
        attnd_srv_tenant *t = by_spec[p->lines[i].spec];
        if (strncmp(key, "cert:", 5) == 0) {
            if (!(g->certs[g->n_certs].identity = strdup(key + 5)))
                goto oom;
            g->certs[g->n_certs++].t = t;
            continue;
        }
        size_t len = strlen(key);
        token_ent *e = slot_of(g, key, len);
        if (!(e->token = strdup(key)))
            goto oom;
        e->len = len;
        e->t = t;
        g->n_tokens++;
    }
    *g_p = g;
    return ATTND_OK;
oom:
    gen_free(g);
    return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--token-file: no memory");
}

/* Make p's options the tenants' own (caller holds the write lock). */
static void commit(attnd_srv_auth *a, const parsed *p, attnd_srv_tenant **by_spec)
{
    for (size_t i = 0; i < a->n_tenants; i++)
        a->tenants[i]->listed = 0;
    for (size_t i = 0; i < p->n_specs; i++) {
        attnd_srv_tenant *t = by_spec[i];
        const spec *sp = &p->specs[i];
        t->listed = 1;
        t->admin = sp->admin;
        t->max_sessions = sp->sessions >= 0 ? (uint64_t)sp->sessions : a->default_sessions;
        t->max_kv_bytes = sp->kv >= 0 ? (uint64_t)sp->kv : a->default_kv;
    }
}

static attnd_status load(attnd_srv_auth *a, attnd_error *err)
{
    parsed p;
    gen *g = NULL, *old = NULL;
    attnd_status st = parse_file(a->path, &p, err);

    if (st)
        return st;
    attnd_srv_tenant **by_spec = calloc(p.n_specs + 1, sizeof *by_spec);
    if (!by_spec) {
        parsed_free(&p);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--token-file: no memory");
    }
    pthread_rwlock_wrlock(&a->lock);
    if ((st = build(a, &p, by_spec, &g, err)) == ATTND_OK) {
        commit(a, &p, by_spec);
        old = a->cur;
        a->cur = g;
    }
    pthread_rwlock_unlock(&a->lock);
    if (st == ATTND_OK) {
        gen_free(old);
        if (p.n_specs == 0)
            attnd_log_warn("auth", "--token-file %s lists no tenant: every call but Health is "
                           "refused", a->path);
    }
    free(by_spec);
    parsed_free(&p);
    return st;
}

/* ---- the API ----------------------------------------------------------------------- */

attnd_status attnd_srv_auth_open(const char *path, uint64_t default_sessions,
                                 uint64_t default_kv_bytes, attnd_srv_auth **auth_p,
                                 attnd_error *err)
{
    attnd_srv_auth *a = calloc(1, sizeof *a);
    attnd_status st;

    if (!a)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--token-file: no memory");
    snprintf(a->path, sizeof a->path, "%s", path);
    a->default_sessions = default_sessions;
    a->default_kv = default_kv_bytes;
    pthread_rwlock_init(&a->lock, NULL);
    if ((st = load(a, err))) {
        attnd_srv_auth_close(a);
        return st;
    }
    *auth_p = a;
    return ATTND_OK;
}

attnd_status attnd_srv_auth_reload(attnd_srv_auth *a, attnd_error *err)
{
    return load(a, err);
}

void attnd_srv_auth_close(attnd_srv_auth *a)
{
    if (!a)
        return;
    gen_free(a->cur);
    for (size_t i = 0; i < a->n_tenants; i++)
        free(a->tenants[i]);
    free(a->tenants);
    pthread_rwlock_destroy(&a->lock);
    free(a);
}

attnd_status attnd_srv_auth_apply(attnd_srv_auth *a, attnd_engine *e, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    pthread_rwlock_rdlock(&a->lock);
    for (size_t i = 0; i < a->n_tenants && st == ATTND_OK; i++) {
        const attnd_srv_tenant *t = a->tenants[i];
        st = attnd_engine_owner_set(e, t->tag, t->name, t->max_sessions, t->max_kv_bytes, err);
    }
    pthread_rwlock_unlock(&a->lock);
    return st;
}

size_t attnd_srv_auth_count(attnd_srv_auth *a)
{
    size_t n = 0;
    pthread_rwlock_rdlock(&a->lock);
    for (size_t i = 0; i < a->n_tenants; i++)
        n += a->tenants[i]->listed;
    pthread_rwlock_unlock(&a->lock);
    return n;
}

/* The bearer token of md, or NULL (*len_p its length). */
static const char *bearer(const grpc_metadata_array *md, size_t *len_p, int *present_p)
{
    static const char key[] = "authorization";
    *present_p = 0;
    for (size_t i = 0; i < md->count; i++) {
        const grpc_metadata *m = &md->metadata[i];
        if (GRPC_SLICE_LENGTH(m->key) != sizeof key - 1 ||
            strncasecmp((const char *)GRPC_SLICE_START_PTR(m->key), key, sizeof key - 1) != 0)
            continue;
        *present_p = 1;
        const char *v = (const char *)GRPC_SLICE_START_PTR(m->value);
        size_t n = GRPC_SLICE_LENGTH(m->value);
        if (n < 7 || strncasecmp(v, "bearer ", 7) != 0)
            return NULL;
        v += 7;
        n -= 7;
        while (n && (*v == ' ' || *v == '\t'))
            v++, n--;
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        *len_p = n;
        return n ? v : NULL;
    }
    return NULL;
}

/* The tenant of the call's client certificate (caller holds the read lock). */
static attnd_srv_tenant *by_cert(const gen *g, grpc_call *call)
{
    attnd_srv_tenant *t = NULL;
    if (!g->n_certs || !call)
        return NULL;
    grpc_auth_context *ctx = grpc_call_auth_context(call);
    if (!ctx)
        return NULL;
    grpc_auth_property_iterator it = grpc_auth_context_peer_identity(ctx);
    const grpc_auth_property *p;
    while (!t && (p = grpc_auth_property_iterator_next(&it)))
        for (size_t i = 0; i < g->n_certs && !t; i++)
            if (strlen(g->certs[i].identity) == p->value_length &&
                memcmp(g->certs[i].identity, p->value, p->value_length) == 0)
                t = g->certs[i].t;
    grpc_auth_context_release(ctx);
    return t;
}

attnd_status attnd_srv_auth_call(attnd_srv_auth *a, const grpc_metadata_array *md,
                                 grpc_call *call, attnd_srv_tenant **tenant_p, int *admin_p,
                                 attnd_error *err)
{
    attnd_srv_tenant *t = NULL;
    size_t len = 0;
    int present;
    const char *tok = bearer(md, &len, &present);

    pthread_rwlock_rdlock(&a->lock);
    if (tok) {
        token_ent *e = slot_of(a->cur, tok, len);
        t = e->token ? e->t : NULL;
    } else if (!present) {
        t = by_cert(a->cur, call);
    }
    int admin = t ? t->admin : 0;
    pthread_rwlock_unlock(&a->lock);
    if (t) {
        *tenant_p = t;
        *admin_p = admin;
        return ATTND_OK;
    }
    if (tok)
        return attnd_error_set(err, ATTND_ERR_UNAUTHENTICATED,
                               "authorization: unknown bearer token");
    if (present)
        return attnd_error_set(err, ATTND_ERR_UNAUTHENTICATED,
                               "authorization: expected \"Bearer TOKEN\"");
    return attnd_error_set(err, ATTND_ERR_UNAUTHENTICATED,
                           "authorization: this server needs a bearer token (metadata "
                           "\"authorization: Bearer TOKEN\") or a listed client certificate");
}
