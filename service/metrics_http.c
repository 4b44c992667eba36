/* The metrics endpoint: GET /metrics over HTTP/1.1, served by libmicrohttpd
 * (Debian's libmicrohttpd12) on --metrics-listen.
 *
 * One internal thread of libmicrohttpd polls the listening socket and its
 * connections (a scrape every few seconds needs no more); each GET /metrics
 * renders the text anew (metrics.c) into a buffer the response frees.
 * "/" answers a one-line pointer to /metrics, anything else 404, methods
 * other than GET and HEAD 405. Connections idle for 30 s are closed and at
 * most 64 are open at once, so a misbehaving scraper cannot hold the
 * endpoint. The endpoint is plain HTTP on the address given: bind it to a
 * pod or loopback address, not the internet.
 */
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "srv.h"

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int code, char *body,
                             size_t len, int owned, const char *type)
{
    struct MHD_Response *r = owned ? MHD_create_response_from_buffer_with_free_callback(
                                         len, body, free)
                                   : MHD_create_response_from_buffer(
                                         len, body, MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    static char not_found[] = "not found: the metrics are at /metrics\n";
    static char index_page[] = "attnd: Prometheus metrics at /metrics\n";
    static char bad_method[] = "only GET and HEAD\n";
    attnd_srv *srv = cls;
    (void)version;
    (void)upload_data;
    (void)req_cls;

    /* answered on the first call, when the headers are in: a body, if the
     * client sends one, is never read (the connection is closed after) */
    (void)upload_data_size;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, bad_method, sizeof bad_method - 1, 0,
                     "text/plain");
    if (strcmp(url, "/") == 0)
        return reply(conn, MHD_HTTP_OK, index_page, sizeof index_page - 1, 0, "text/plain");
    if (strcmp(url, "/metrics") != 0)
        return reply(conn, MHD_HTTP_NOT_FOUND, not_found, sizeof not_found - 1, 0,
                     "text/plain");
    char *body;
    size_t len;
    if (attnd_srv_metrics_render(srv, &body, &len))
        return MHD_NO; /* out of memory: drop the connection */
    return reply(conn, MHD_HTTP_OK, body, len, 1, CONTENT_TYPE);
}

attnd_status attnd_srv_metrics_http_start(attnd_srv *srv, const char *listen,
                                          attnd_error *err)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *res;
    char *end;

    if (!colon || (size_t)(colon - listen) >= sizeof host || !colon[1])
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--metrics-listen: expected HOST:PORT, got \"%s\"", listen);
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--metrics-listen: bad port in \"%s\"", listen);
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    if (getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res) != 0 || !res)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--metrics-listen: cannot resolve host \"%s\"", host);
    srv->metrics_http = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, 0, NULL, NULL, on_request, srv,
        MHD_OPTION_SOCK_ADDR, res->ai_addr, MHD_OPTION_CONNECTION_LIMIT, 64u,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
    freeaddrinfo(res);
    if (!srv->metrics_http)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "--metrics-listen: cannot listen on %s (in use, or not a "
                               "local address?)",
                               listen);
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(srv->metrics_http, MHD_DAEMON_INFO_BIND_PORT);
    srv->metrics_port = info ? info->port : (int)port;
    return ATTND_OK;
}

void attnd_srv_metrics_http_stop(attnd_srv *srv)
{
    if (srv->metrics_http) {
        MHD_stop_daemon(srv->metrics_http);
        srv->metrics_http = NULL;
    }
}
