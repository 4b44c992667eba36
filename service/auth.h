/* Tenants and how a call proves which one it is (issue 15; auth.c).
 *
 * --token-file names the tenants: each line maps a bearer token, or the
 * identity of an mTLS client certificate, to a tenant, with the tenant's
 * options. A call then carries "authorization: Bearer TOKEN" (or comes
 * over a TLS connection whose client certificate is listed); anything
 * else is UNAUTHENTICATED. Health answers everyone (probes carry no
 * token).
 *
 * A tenant's owner tag (the first 8 bytes of SHA-256 over its name) binds
 * its sessions in the engine (attnd_engine_sessions_check): the same name
 * gives the same tag on every rank and after every reload. Tenants live as
 * long as the table (a call keeps a pointer to its tenant); one dropped
 * from the file at a reload can no longer authenticate, and its sessions
 * stay until closed or expired.
 */
#ifndef ATTND_SRV_AUTH_H
#define ATTND_SRV_AUTH_H

#include <stdatomic.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "attnd/status.h"
#include "attnd_worker.h"

#define ATTND_SRV_TENANT_NAME_MAX 64
/* Bearer tokens shorter than this are refused at load: a token is the
 * whole secret. */
#define ATTND_SRV_TOKEN_MIN 16

typedef struct attnd_srv_tenant {
    char name[ATTND_SRV_TENANT_NAME_MAX];
    uint64_t tag;                /* nonzero: its sessions' owner */
    /* as of the last (re)load: read with the table's lock held */
    int admin;                   /* GetStats shows global figures; LoadWeights */
    uint64_t max_sessions;       /* 0: no limit */
    uint64_t max_kv_bytes;       /* 0: no limit */
    int listed;                  /* in the file now */
    atomic_uint_fast64_t errors; /* its calls that failed (GetStats) */
} attnd_srv_tenant;

typedef struct attnd_srv_auth attnd_srv_auth;

/* Load path; a tenant whose lines give no limit gets default_sessions /
 * default_kv_bytes (0: none). INVALID_ARGUMENT naming the file and line
 * (never a token) on a malformed file. Free with attnd_srv_auth_close. */
attnd_status attnd_srv_auth_open(const char *path, uint64_t default_sessions,
                                 uint64_t default_kv_bytes, attnd_srv_auth **auth_p,
                                 attnd_error *err);
/* Read the file again. A malformed file changes nothing (the error says
 * why); calls already authenticated go on as they were. */
attnd_status attnd_srv_auth_reload(attnd_srv_auth *a, attnd_error *err);
void attnd_srv_auth_close(attnd_srv_auth *a);

/* Give every tenant's name and limits to the engine. */
attnd_status attnd_srv_auth_apply(attnd_srv_auth *a, attnd_engine *e, attnd_error *err);

/* Who a call is: its "authorization: Bearer TOKEN" metadata, else (call
 * over mTLS) its certificate's identity. *tenant_p and *admin_p on
 * success; UNAUTHENTICATED otherwise. Allocates nothing. */
attnd_status attnd_srv_auth_call(attnd_srv_auth *a, const grpc_metadata_array *md,
                                 grpc_call *call, attnd_srv_tenant **tenant_p, int *admin_p,
                                 attnd_error *err);

/* Tenants listed now (for the start-up line). */
size_t attnd_srv_auth_count(attnd_srv_auth *a);

/* The tag of a tenant name (also what tests compute). */
uint64_t attnd_srv_tenant_tag(const char *name);

#endif /* ATTND_SRV_AUTH_H */
