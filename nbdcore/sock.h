/* sock.h (nbdcore internal): a byte stream over a socket, plain or TLS.
 *
 * The client and the server engine talk to their peer only through this
 * interface, so that STARTTLS is a matter of swapping what sits under the
 * same struct.  Not part of the public API: only the files of nbdcore include it.
 *
 * Error convention: -1 with errno set and a message stored with
 * nbd_set_error() (see error.h); EAGAIN / EWOULDBLOCK are returned without a
 * message when the socket is non-blocking and nothing can move now.
 */
#ifndef NBDCORE_SOCK_H
#define NBDCORE_SOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct nbd_sock;

/* Client TLS parameters, as the NBD URI and libnbd define them. */
struct nbd_tls_client_config {
    const char *certificates_dir; /* X.509: ca-cert.pem [client-cert.pem client-key.pem ca-crl.pem] */
    const char *psk_file;         /* PSK: lines "username:hexkey" */
    const char *username;         /* PSK user; NULL = login name */
    const char *hostname;         /* TCP host: SNI and certificate check; NULL for Unix sockets */
    bool verify_peer;             /* X.509: verify the server certificate (default true) */
};

/* Server TLS credentials, loaded once and shared by every connection. */
struct nbd_tls_server_creds;

/* Takes ownership of fd (closed by nbd_sock_close). */
struct nbd_sock *nbd_sock_new(int fd);
int nbd_sock_fd(const struct nbd_sock *s);
bool nbd_sock_is_tls(const struct nbd_sock *s);

/* Blocking helpers used during the handshake; they honour the deadline set
 * with nbd_sock_set_timeout (milliseconds, <= 0 = none), returning -1 with
 * ETIMEDOUT when it passes.  recv_all returns 0 on success, -1 on error or
 * on EOF before len bytes (errno ECONNRESET, message "server closed the
 * connection" / "peer closed the connection"). */
void nbd_sock_set_timeout(struct nbd_sock *s, int timeout_ms);
int nbd_sock_send_all(struct nbd_sock *s, const void *buf, size_t len);
/* a[alen] then b[blen], in one system call where the transport allows. */
int nbd_sock_send_all2(struct nbd_sock *s, const void *a, size_t alen, const void *b, size_t blen);
int nbd_sock_recv_all(struct nbd_sock *s, void *buf, size_t len);

/* One non-blocking-friendly step: returns bytes moved (> 0), 0 on EOF
 * (recv only), or -1 with errno (EAGAIN when it would block). */
ssize_t nbd_sock_recv(struct nbd_sock *s, void *buf, size_t len);
ssize_t nbd_sock_send(struct nbd_sock *s, const void *buf, size_t len);

/* True when the TLS layer holds decrypted bytes that poll() cannot see. */
bool nbd_sock_pending(const struct nbd_sock *s);

/* Switch the stream to TLS (after the STARTTLS ACK).  Performs the whole
 * handshake; on failure the connection must be dropped. */
int nbd_sock_starttls_client(struct nbd_sock *s, const struct nbd_tls_client_config *cfg);
int nbd_sock_starttls_server(struct nbd_sock *s, struct nbd_tls_server_creds *creds);

/* x509_dir holds ca-cert.pem, server-cert.pem, server-key.pem (ca-crl.pem
 * optional); psk_file holds "username:hexkey" lines.  Exactly one is given. */
struct nbd_tls_server_creds *nbd_tls_server_creds_load(const char *x509_dir, const char *psk_file,
                                                       bool verify_peer);
void nbd_tls_server_creds_free(struct nbd_tls_server_creds *c);

/* Half-close the write side (TLS close_notify first when TLS is on). */
int nbd_sock_shutdown_write(struct nbd_sock *s);
/* Closes and frees; accepts NULL. */
void nbd_sock_close(struct nbd_sock *s);

#endif
