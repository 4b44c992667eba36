/* attnd: the attention-offload server executable.
 *
 * Raises the soft fd limit to the hard one, loads the configuration (flags
 * over ATTND_* variables), creates the engine and the gRPC server,
 * announces the bound address on stdout (and in --port-file), then waits
 * for SIGTERM or SIGINT. Signals are blocked in every thread and taken here
 * with sigwait, so no work runs in a handler. On the first signal the
 * server drains (drain.c: health NOT_SERVING at once, new calls served for
 * --drain-delay-ms, then refused with UNAVAILABLE while what was received
 * finishes, for up to --shutdown-grace-ms; a second signal cuts that
 * short), cancels what is left, and everything is torn down before exit 0.
 *
 * SIGHUP rereads --token-file and the TLS certificates (attnd_srv_reload;
 * a file that does not load is logged and changes nothing).
 *
 * Exit codes: 0 clean stop (or --help, --list-models, --print-config), 1 cannot start,
 * 2 bad flag or variable. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "attnd_log.h"
#include "srv.h"
#include "ucx_server.h"

static sigset_t stop_signals;

/* A second stop signal pending? Polled while shutdown waits. */
static int stop_signal_pending(void)
{
    struct timespec zero = {0, 0};
    return sigtimedwait(&stop_signals, NULL, &zero) > 0;
}

/* Write the port to path atomically (a reader never sees half a file). */
static int write_port_file(const char *path, int port)
{
    char tmp[PATH_MAX + 8];
    FILE *f;

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!(f = fopen(tmp, "w")))
        return -1;
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    attnd_srv_config cfg;
    attnd_engine_config ecfg;
    attnd_engine *engine = NULL;
    attnd_engine_stats est;
    attnd_srv *srv = NULL;
    attnd_group_config gcfg;
    attnd_group *group = NULL;
    attnd_error err;
    int sig, rc = 1, grouped = 0;

    /* before any thread exists (grpc_init starts some): all inherit this */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigset_t waited = stop_signals;
    sigaddset(&waited, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &waited, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* a file size limit makes the KV tier's writes fail (EFBIG: the disk
     * counts as full, RESOURCE_EXHAUSTED) instead of killing the process */
    signal(SIGXFSZ, SIG_IGN);

    uint64_t nofile = attnd_srv_raise_fd_limit();
    attnd_error_clear(&err);
    if (attnd_srv_config_load(&cfg, argc, argv, &err)) {
        attnd_log_error("attnd", "%s", err.msg);
        return 2;
    }
    if (cfg.show_help) {
        attnd_srv_config_usage(stdout);
        return 0;
    }
    if (cfg.list_models) {
        attnd_srv_config_list_models(stdout);
        return 0;
    }
    attnd_log_configure(cfg.log_format, cfg.log_level); /* validated by the load */
    attnd_srv_config_engine(&cfg, &ecfg);
    /* a worker group rank: its engine serves the rank's shard */
    if (attnd_srv_config_group(&cfg, &ecfg, &gcfg, &grouped, &err)) {
        attnd_log_error("attnd", "%s", err.msg);
        return 2;
    }
    if (cfg.print_config) { /* checked like a start, up to the engine */
        attnd_srv_config_print(stdout, &cfg);
        return 0;
    }
    /* the engine takes a host-RAM tier below any pool (its tests run one
     * below the CPU's); a worker only below a GPU's */
    if (ecfg.kv_host && strncmp(ecfg.device, "cuda", 4) != 0) {
        attnd_log_error("attnd", "kv-host: a host-RAM tier goes below a GPU's memory (--device "
                                 "cuda); on the CPU, KV pages already live in host RAM: use "
                                 "--kv-dir for a tier below it");
        return 1;
    }
    if (attnd_engine_create(&ecfg, &engine, &err)) {
        attnd_log_error("attnd", "%s", err.msg);
        return 1;
    }
    grpc_init();
    if (grouped && attnd_group_create(&gcfg, engine, &group, &err)) {
        OPENSSL_cleanse(gcfg.secret, sizeof gcfg.secret);
        attnd_log_error("attnd", "%s", err.msg);
        goto out;
    }
    OPENSSL_cleanse(gcfg.secret, sizeof gcfg.secret); /* the group has its copy */
    if (attnd_srv_create(&cfg, engine, &srv, &err)) {
        attnd_log_error("attnd", "%s", err.msg);
        goto out;
    }
    if (group) { /* requests are validated against the whole model */
        srv->group = group;
        attnd_srv_model_init(&srv->model, attnd_group_model(group), cfg.page_size,
                             cfg.max_sessions);
    }
    if (attnd_srv_start(srv, &err)) {
        attnd_log_error("attnd", "%s", err.msg);
        goto out;
    }
    if (cfg.port_file[0] && write_port_file(cfg.port_file, srv->port)) {
        attnd_log_error("attnd", "--port-file %s: %s", cfg.port_file, strerror(errno));
        attnd_srv_shutdown(srv, 0, 0, NULL);
        goto out;
    }
    attnd_engine_get_stats(engine, &est);
    const char *colon = strrchr(cfg.listen, ':');
    printf("attnd: listening on %.*s:%d model=%s kv=%s pages=%llu page_size=%d "
           "page_bytes=%llu threads=%d io_threads=%d device=%s max_connections=%lld "
           "fd_limit=%llu\n",
           (int)(colon - cfg.listen), cfg.listen, srv->port, attnd_engine_model(engine)->name,
           attnd_dtype_name(attnd_engine_model(engine)->kv_dtype),
           (unsigned long long)est.pages_total, cfg.page_size,
           (unsigned long long)est.page_bytes, cfg.threads, cfg.io_threads, cfg.device,
           (long long)srv->max_connections, (unsigned long long)nofile);
    if (srv->ucx)
        printf("attnd: Attend over UCX on %s\n", attnd_srv_ucx_address(srv));
    if (srv->tls || srv->auth)
        printf("attnd: gRPC over %s%s; %s\n", srv->tls ? "TLS" : "plaintext",
               cfg.tls_client_ca[0] ? " with client certificates (mutual TLS)" : "",
               srv->auth ? "calls authenticated by --token-file" : "no authentication");
    if (srv->metrics_http)
        printf("attnd: metrics on http://%.*s:%d/metrics\n",
               (int)(strrchr(cfg.metrics_listen, ':') - cfg.metrics_listen), cfg.metrics_listen,
               srv->metrics_port);
    if (est.below[0])
        printf("attnd: KV tier below memory: %s %s, %llu slots of %llu bytes; durable %s%s\n",
               est.below, est.below[0] == 'h' ? "RAM" : cfg.kv_dir,
               (unsigned long long)est.below_slots, (unsigned long long)est.below_slot_bytes,
               est.durable == ATTND_ENGINE_DURABLE_SYNC    ? "sync"
               : est.durable == ATTND_ENGINE_DURABLE_BATCH ? "batch"
                                                           : "off",
               est.sessions_recovered ? " (sessions recovered)" : "");
    if (group)
        printf("attnd: group rank %d of %d, shard %s, rendezvous port %d\n", gcfg.rank,
               gcfg.size, attnd_group_mode_name(gcfg.mode), attnd_group_port(group));
    fflush(stdout);

    for (;;) {
        if (sigwait(&waited, &sig) != 0)
            continue;
        if (sig != SIGHUP)
            break;
        attnd_srv_reload(srv);
    }
    attnd_log_info("server", "%s: draining (health NOT_SERVING; new calls served for %lld ms, "
                   "then refused; %lld ms for calls received)", strsignal(sig),
                   (long long)cfg.drain_delay_ms, (long long)cfg.shutdown_grace_ms);
    if (attnd_srv_shutdown(srv, cfg.drain_delay_ms, cfg.shutdown_grace_ms, stop_signal_pending))
        attnd_log_warn("server", "calls still in flight were cancelled");
    rc = 0;

out:
    attnd_srv_destroy(srv);
    attnd_group_destroy(group);
    grpc_shutdown();
    attnd_engine_destroy(engine);
    return rc;
}
