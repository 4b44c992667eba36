/* Internals shared by the attnd_ucxw files (ucxw_setup.c, ucxw_ep.c):
 * the record every UCX request carries (ucp_init reserves its size), so
 * that a completion finds its callback; the two halves of the reaping. */
#ifndef ATTND_UCXW_INT_H
#define ATTND_UCXW_INT_H

#include "attnd_ucxw.h"

typedef struct attnd__ucxw_req {
    attnd_ucxw_send_cb send_cb;
    attnd_ucxw_recv_cb recv_cb;
} attnd__ucxw_req;

/* Free the close requests that finished (ucxw_ep.c). */
void attnd__ucxw_reap_closes(attnd_ucxw *w);
/* Destroy retired peer workers whose closes finished (ucxw_setup.c). */
void attnd__ucxw_reap_workers(attnd_ucxw *w);

#endif /* ATTND_UCXW_INT_H */
