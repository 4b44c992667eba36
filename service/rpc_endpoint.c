/* GetEndpoint: the handshake of the UCX data path. Returns where this
 * rank's UCX listener is ("" when --ucx-listen is off) and the framing
 * version of proto/attnd_ucx.h; the client then connects a ucp endpoint
 * there. */
#include "attnd_ucx.h"
#include "ucx_server.h"

void attnd_srv_get_endpoint_start(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    attnd_error err;

    attnd_error_clear(&err);
    if (!attnd_srv_call_decode(c, &attnd__v1__get_endpoint_request__descriptor, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    Attnd__V1__GetEndpointResponse resp = ATTND__V1__GET_ENDPOINT_RESPONSE__INIT;
    resp.ucx_address = (char *)attnd_srv_ucx_address(srv);
    resp.ucx_wire_version = ATTND_UCX_WIRE_VERSION;
    attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
}
