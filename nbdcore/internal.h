/* internal.h (nbdcore internal): the connection object shared by the
 * handshake (handshake.c), transmission (client.c) and pool (pool.c). */
#ifndef NBDCORE_INTERNAL_H
#define NBDCORE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "codec.h"
#include "nbdcore.h"
#include "sock.h"

struct op;

/* One request on the wire. */
struct request {
    struct request *next;         /* send queue */
    struct request *hnext;        /* in-flight hash chain */
    struct op *op;
    uint64_t cookie;
    uint16_t type, flags;
    uint64_t offset, count;
    uint8_t hdr[32];
    size_t hdrlen;
    const uint8_t *payload;       /* WRITE data or block status filter */
    size_t payload_len;
    uint8_t filter[12];           /* block status payload: effect length + 1 id */
    uint8_t *buf;                 /* READ destination (user memory or bounce) */
    uint8_t *bounce;              /* READ of an unaligned range: copy out on success */
    uint8_t *user_dst;
    uint64_t bounce_skip, user_len;
    struct nbd_cover cover;       /* READ: what the chunks filled */
    uint32_t status_seen;         /* BLOCK_STATUS: bit per context index (< 32) */
    uint64_t status_seen_hi;      /* ... or a count when there are more */
    int err;                      /* first error of this request */
    char errmsg[400];
};

struct context {
    uint32_t id;
    char *name;
};

#define NBD_HASH_BUCKETS 256

struct nbd_conn {
    struct nbd_sock *sock;
    struct nbd_uri uri;
    char *uri_string;             /* for messages */
    struct nbd_conn_opts opts;
    char **want_contexts;         /* copy of opts.meta_contexts */

    /* Negotiation. */
    const char *protocol;
    uint16_t gflags;
    bool fixed, no_zeroes;
    bool tls;
    bool structured, extended;
    bool in_transmission;
    bool negotiation_over;        /* aborted or failed */
    uint64_t size;
    uint16_t eflags;
    bool has_block_size;
    uint32_t min_block, pref_block, max_block;
    uint32_t max_request;         /* READ / WRITE pieces (see REQUEST_SIZE) */
    uint32_t max_payload;         /* the server's limit (CACHE) */
    char *canonical_name, *description;
    struct context *contexts;
    size_t ncontexts;

    /* Transmission. */
    enum nbd_reply_mode mode;
    bool dead;
    char dead_msg[512];
    int dead_errno;
    uint64_t next_cookie;
    unsigned in_flight;           /* wire requests not yet answered */
    unsigned ops_in_flight;       /* user operations not yet completed */
    int64_t wait_since_ms;        /* last bytes received, or the first op put in flight */
    unsigned big_reads;           /* reads of BIG_READ bytes or more in flight */
    struct request *sendq_head, *sendq_tail;
    struct request *inflight[NBD_HASH_BUCKETS];

    /* Output staging: headers and small payloads are gathered here. */
    uint8_t *obuf;
    size_t olen, opos;
    const uint8_t *direct;        /* a large payload sent straight from memory */
    size_t direct_len, direct_pos;

    /* Input. */
    uint8_t *ibuf;
    size_t ilen, ipos;
    int rx_state;
    uint8_t rx_hdr[32];
    size_t rx_hdr_need;
    uint8_t *rx_ptr;
    uint64_t rx_left;
    struct nbd_reply_hdr rx_h;
    struct request *rx_req;
    uint8_t *rx_payload;          /* metadata chunk payloads */
    size_t rx_payload_cap;
    uint64_t rx_data_off;
    uint8_t rx_off8[8];
};

/* handshake.c */
int nbd_handshake_start(struct nbd_conn *c);
void nbd_handshake_abort(struct nbd_conn *c);

/* client.c */
int nbd_transmission_init(struct nbd_conn *c);
void nbd_transmission_free(struct nbd_conn *c);
/* Feeds bytes as if received from the socket (the fuzzer uses it). */
int nbd_rx_feed(struct nbd_conn *c, const uint8_t *p, size_t len);
/* A connection in transmission with the given negotiated state and no
 * socket (the fuzzer and unit tests use it). */
struct nbd_conn *nbd_conn_new_detached(bool structured, bool extended, uint64_t size,
                                       uint16_t eflags, const char *const *contexts);
/* client.c's checks, shared with sync.c. */
uint32_t nbd_conn_alignment(const struct nbd_conn *c);
int nbd_conn_refuse(struct nbd_conn *c, const char *what);
int64_t nbd_conn_context_index(const struct nbd_conn *c, const char *name);
int nbd_conn_check_range(struct nbd_conn *c, const char *what, uint64_t count, uint64_t offset);

/* The reply timeout (sync.c): the poll timeout cut to what is left of it,
 * and the connection killed (ETIMEDOUT) once it has run out. */
int nbd_stall_clamp(const struct nbd_conn *c, int timeout_ms);
int nbd_stall_check(struct nbd_conn *c);
void nbd_conn_kill(struct nbd_conn *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
