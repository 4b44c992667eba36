/* TLS on the gRPC port: the server credentials, and their reload on
 * SIGHUP (issue 15).
 *
 * gRPC's SSL server credentials are made with a certificate config
 * fetcher: gRPC asks it before every handshake, and it hands over a new
 * config only when one is waiting (the first at start, then one per
 * successful reload), else answers UNCHANGED. So a reload takes effect for
 * the next connection; open connections keep their session.
 *
 * gRPC reads the PEM files' contents lazily, at the next handshake, where a
 * bad certificate would fail every client; so every load first checks the
 * files with OpenSSL (the chain's first certificate, the key, that they
 * belong together, the client CAs parse) and a reload that fails changes
 * nothing.
 *
 * Client certificates (--tls-client-ca): requested and required, verified
 * against those CAs. Without it clients are not asked; gRPC 1.51 still
 * wants root certificates in every fetched config (an assertion), so the
 * server's own chain stands in: it verifies nothing, since no client
 * certificate is requested.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "srv.h"

#define PEM_MAX (1 << 20)

struct attnd_srv_tls {
    const attnd_srv_config *cfg;
    pthread_mutex_t mu;
    grpc_ssl_server_certificate_config *pending; /* the next fetch hands it over */
    uint64_t loads;
};

/* The whole file, NUL-terminated (caller frees); NULL with err filled. */
static char *slurp(const char *flag, const char *path, attnd_error *err)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t n = 0;

    if (!f) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "%s %s: %s", flag, path,
                        strerror(errno));
        return NULL;
    }
    if (!(buf = malloc(PEM_MAX + 1))) {
        attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: no memory", flag);
        goto out;
    }
    n = fread(buf, 1, PEM_MAX + 1, f);
    if (ferror(f) || n > PEM_MAX) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "%s %s: %s", flag, path,
                        ferror(f) ? "read error" : "larger than 1 MiB");
        free(buf);
        buf = NULL;
        goto out;
    }
    buf[n] = '\0';
out:
    fclose(f);
    return buf;
}

/* OpenSSL's reason for the last failure, for a message. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "not PEM";
}

/* Certificates in pem (at least one), or -1. */
static int count_certs(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    int n = 0;
    X509 *x;
    if (!b)
        return -1;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        X509_free(x);
        n++;
    }
    ERR_clear_error(); /* the end of the input reads as an error */
    BIO_free(b);
    return n ? n : -1;
}

/* The chain's first certificate and the key belong together. */
static attnd_status check_pair(const attnd_srv_config *cfg, const char *chain, const char *key,
                               attnd_error *err)
{
    attnd_status st = ATTND_OK;
    BIO *bc = BIO_new_mem_buf(chain, -1), *bk = BIO_new_mem_buf(key, -1);
    X509 *x = bc ? PEM_read_bio_X509(bc, NULL, NULL, NULL) : NULL;
    EVP_PKEY *k = NULL;

    if (!x) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "--tls-cert %s: no PEM certificate (%s)", cfg->tls_cert,
                             ssl_reason());
        goto out;
    }
    if (!bk || !(k = PEM_read_bio_PrivateKey(bk, NULL, NULL, NULL))) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "--tls-key %s: no PEM private key (%s; an encrypted key is not "
                             "supported)", cfg->tls_key, ssl_reason());
        goto out;
    }
    if (X509_check_private_key(x, k) != 1) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "--tls-key %s: not the key of the first certificate in --tls-cert "
                             "%s", cfg->tls_key, cfg->tls_cert);
        ERR_clear_error();
    }
out:
    EVP_PKEY_free(k);
    X509_free(x);
    BIO_free(bc);
    BIO_free(bk);
    return st;
}

/* Read and check the files; a gRPC certificate config (caller owns). */
static attnd_status load(const attnd_srv_config *cfg, grpc_ssl_server_certificate_config **c_p,
                         attnd_error *err)
{
    char *chain = NULL, *key = NULL, *ca = NULL;
    attnd_status st;

    if (!(chain = slurp("--tls-cert", cfg->tls_cert, err)) ||
        !(key = slurp("--tls-key", cfg->tls_key, err)) ||
        (cfg->tls_client_ca[0] && !(ca = slurp("--tls-client-ca", cfg->tls_client_ca, err)))) {
        st = err->code;
        goto out;
    }
    if ((st = check_pair(cfg, chain, key, err)))
        goto out;
    if (ca && count_certs(ca) < 0) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "--tls-client-ca %s: no PEM certificate", cfg->tls_client_ca);
        goto out;
    }
    grpc_ssl_pem_key_cert_pair pair = {key, chain};
    *c_p = grpc_ssl_server_certificate_config_create(ca ? ca : chain, &pair, 1);
    st = *c_p ? ATTND_OK
              : attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--tls-cert: no memory");
out:
    if (key) {
        OPENSSL_cleanse(key, strlen(key));
        free(key);
    }
    free(chain);
    free(ca);
    return st;
}

static grpc_ssl_certificate_config_reload_status fetch(void *user,
                                                       grpc_ssl_server_certificate_config **c)
{
    attnd_srv_tls *t = user;
    grpc_ssl_certificate_config_reload_status r = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    pthread_mutex_lock(&t->mu);
    if (t->pending) {
        *c = t->pending; /* gRPC owns it now */
        t->pending = NULL;
        r = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
    }
    pthread_mutex_unlock(&t->mu);
    return r;
}

attnd_status attnd_srv_tls_open(const attnd_srv_config *cfg, attnd_srv_tls **tls_p,
                                grpc_server_credentials **creds_p, attnd_error *err)
{
    attnd_srv_tls *t = calloc(1, sizeof *t);
    attnd_status st;

    if (!t)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--tls-cert: no memory");
    t->cfg = cfg;
    pthread_mutex_init(&t->mu, NULL);
    if ((st = load(cfg, &t->pending, err)))
        goto err_free;
    t->loads = 1;
    grpc_ssl_server_credentials_options *o =
        grpc_ssl_server_credentials_create_options_using_config_fetcher(
            cfg->tls_client_ca[0] ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                  : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
            fetch, t);
    grpc_server_credentials *creds = o ? grpc_ssl_server_credentials_create_with_options(o)
                                       : NULL;
    if (!creds) {
        st = attnd_error_set(err, ATTND_ERR_INTERNAL, "--tls-cert: gRPC made no credentials");
        goto err_free;
    }
    *tls_p = t;
    *creds_p = creds;
    return ATTND_OK;

err_free:
    attnd_srv_tls_close(t);
    return st;
}

attnd_status attnd_srv_tls_reload(attnd_srv_tls *t, attnd_error *err)
{
    grpc_ssl_server_certificate_config *c = NULL, *old;
    attnd_status st = load(t->cfg, &c, err);
    if (st)
        return st;
    pthread_mutex_lock(&t->mu);
    old = t->pending; /* never fetched: a newer one replaces it */
    t->pending = c;
    t->loads++;
    pthread_mutex_unlock(&t->mu);
    if (old)
        grpc_ssl_server_certificate_config_destroy(old);
    return ATTND_OK;
}

void attnd_srv_tls_close(attnd_srv_tls *t)
{
    if (!t)
        return;
    if (t->pending)
        grpc_ssl_server_certificate_config_destroy(t->pending);
    pthread_mutex_destroy(&t->mu);
    free(t);
}
