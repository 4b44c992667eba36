/* The framing of attnd messages over UCX active messages (ucp_am_*).
 *
 * The data path of Attend may run over UCX instead of gRPC; the messages
 * are the same protobuf encodings (AttendRequest, AttendResponse of
 * attnd.proto), carried as the payload of one active message each, with a
 * small fixed header beside them:
 *
 *   client -> server  AM id ATTND_UCX_AM_ATTEND, sent with
 *                     UCP_AM_SEND_FLAG_REPLY (the server answers on the
 *                     endpoint the request came on)
 *                     header: attnd_ucx_hdr {id, status 0, deadline_ms}
 *                     payload: an encoded AttendRequest
 *   server -> client  AM id ATTND_UCX_AM_REPLY
 *                     header: attnd_ucx_reply_hdr: attnd_ucx_hdr {id of the
 *                     request, status, 0}, then the server's timings of
 *                     the call in ns (0 on failure; the same split as
 *                     gRPC's "attnd-timing" trailer)
 *                     payload: status 0: an encoded AttendResponse;
 *                     otherwise the error message (UTF-8, no NUL), which
 *                     names the offending field exactly as the gRPC
 *                     status message would
 *
 * `id` is the client's to choose (it matches replies to calls in flight);
 * `status` is an attnd_status, i.e. the negated gRPC status code. Fields
 * are little-endian (hosts are). UCX picks eager or rendezvous transfer by
 * size; both ends accept either.
 *
 * The connection is made by a gRPC GetEndpoint call (version 2): the
 * client sends its ucp worker address and who it is (UcxHost), the server
 * connects an endpoint to that address and answers with its own worker
 * address, whether the two share a host (then both endpoints go without
 * UCX error handling, over shared memory + CMA, and each side watches the
 * other's process through a pidfd) and ATTND_UCX_WIRE_VERSION; the client
 * connects to the server's address and refuses another version. No UCX
 * listener exists. Control calls (sessions, prefill, stats) stay on gRPC.
 * Version 1 connected to a sockaddr listener (ucp_listener_create), which
 * UCX 1.13 aborts the process on when sent 17 garbage bytes.
 */
#ifndef ATTND_UCX_WIRE_H
#define ATTND_UCX_WIRE_H

#include <stdint.h>

#define ATTND_UCX_WIRE_VERSION 2

enum {
    ATTND_UCX_AM_ATTEND = 17,
    ATTND_UCX_AM_REPLY = 18,
    ATTND_UCX_AM_BYE = 19, /* client -> server, header {0, 0, 0}, no payload,
                              with UCP_AM_SEND_FLAG_REPLY: the client closes
                              this endpoint; the server closes its side (a
                              same-host endpoint has no UCX error handling
                              that would tell it) */
    ATTND_UCX_AM_HELLO = 20, /* client -> server at connect, header {0, 0, 0},
                                no payload, with UCP_AM_SEND_FLAG_REPLY; ignored.
                                Its completion means UCX resolved the
                                connection, so later requests never wait on
                                the server to be sent */
};

typedef struct attnd_ucx_hdr {
    uint64_t id;
    int32_t status;
    uint32_t deadline_ms; /* request: the client's deadline, counted from
                             sending (0: none), so that a worker group
                             leader can fail a lost peer within it;
                             reply: 0 */
} attnd_ucx_hdr;

_Static_assert(sizeof(attnd_ucx_hdr) == 16, "attnd_ucx_hdr is 16 bytes on the wire");

typedef struct attnd_ucx_reply_hdr {
    attnd_ucx_hdr h;
    uint64_t queue_ns;    /* arrival through decoding the request */
    uint64_t validate_ns;
    uint64_t kernel_ns;   /* the engine's attend */
    uint64_t fanout_ns;   /* group call beyond the leader's own share
                             (kernel_ns): scatter, peers, combine; 0 on one
                             rank */
    uint64_t encode_ns;   /* reply encoding */
} attnd_ucx_reply_hdr;

_Static_assert(sizeof(attnd_ucx_reply_hdr) == 56, "attnd_ucx_reply_hdr is 56 bytes");

#endif /* ATTND_UCX_WIRE_H */
