/* The group secret's part of the rendezvous (issue 15 item 4): the
 * proofs two ranks exchange before either tells the other its UCX address
 * or its token, and the bare cards that carry them.
 *
 * A proof is HMAC-SHA-256 under the group key (32 bytes that service/
 * derives from --group-secret-file) over a label that names the side
 * ("acceptor" or "connector") and the two bare headers of this
 * connection: the connector's CHALLENGE and the acceptor's PROOF header,
 * each with a fresh 16-byte random nonce and the sender's rank. So the
 * secret never travels; a proof is good for one connection only (both
 * nonces); the acceptor's proof cannot be replayed as the connector's
 * (the label); and a process that does not hold the key learns nothing
 * it could use: no address, no token, not even the group's settings.
 *
 * What it does not do: encrypt, or bind the proofs to the TCP connection
 * (there is no key exchange). Someone who can sit between two ranks and
 * relay their bytes can read what follows the proofs, as they can read
 * the UCX traffic itself; that is the deployment's to prevent (a private
 * network or an encrypted overlay: client/TRANSPORT.md).
 */
#include <string.h>
#include <sys/random.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "group_int.h"

static const char label_acceptor[] = "attnd group rendezvous v2: acceptor";
static const char label_connector[] = "attnd group rendezvous v2: connector";

void attnd__gcard_bare(uint16_t kind, int32_t rank, int32_t status, uint32_t payload_len,
                       unsigned char *out)
{
    attnd__gcard c;
    memset(&c, 0, sizeof c);
    c.version = ATTND__GCARD_VERSION;
    c.kind = kind;
    c.rank = rank;
    c.status = status;
    c.payload_len = payload_len;
    if (getrandom(c.nonce, sizeof c.nonce, 0) != (ssize_t)sizeof c.nonce)
        memset(c.nonce, 0, sizeof c.nonce); /* the peer's nonce still varies */
    attnd__gcard_encode(&c, NULL, out);
}

int attnd__grdv_mac(const attnd_group *g, int acceptor, const unsigned char *th,
                    unsigned char mac[ATTND__GCARD_MAC])
{
    unsigned char msg[sizeof label_connector + 2 * ATTND__GCARD_HDR];
    const char *label = acceptor ? label_acceptor : label_connector;
    size_t n = strlen(label) + 1; /* with its NUL: the labels differ in length */
    unsigned int len = 0;

    memcpy(msg, label, n);
    memcpy(msg + n, th, 2 * ATTND__GCARD_HDR);
    if (!HMAC(EVP_sha256(), g->cfg.secret, (int)sizeof g->cfg.secret, msg,
              n + 2 * ATTND__GCARD_HDR, mac, &len) ||
        len != ATTND__GCARD_MAC)
        return -1;
    return 0;
}

int attnd__grdv_mac_ok(const attnd_group *g, int acceptor, const unsigned char *th,
                       const unsigned char *mac)
{
    unsigned char want[ATTND__GCARD_MAC];
    int ok = attnd__grdv_mac(g, acceptor, th, want) == 0 &&
             CRYPTO_memcmp(want, mac, ATTND__GCARD_MAC) == 0;
    OPENSSL_cleanse(want, sizeof want);
    return ok;
}
