/* test_sock_tls.c: nbdcore/sock.c over a socketpair, plain and TLS.
 *
 * The group setup makes a throwaway PKI with certtool and psktool (gnutls-bin)
 * in a temporary directory; without those tools the TLS tests are skipped.
 * Each TLS test runs a client thread and a server thread, one per end of a
 * socketpair.  Errors are per thread, so each side copies its own message;
 * only the main thread asserts.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "nbdcore/nbdcore.h"
#include "nbdcore/error.h"
#include "nbdcore/sock.h"

#define TIMEOUT_MS 3000
#define PAYLOAD (1024 * 1024)

static char tmpdir[] = "/tmp/nbdvault-test-tls-XXXXXX";
static bool have_pki;

static void pathf(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

static int group_setup(void **state)
{
    char cmd[4096];

    (void)state;
    if (system("command -v certtool >/dev/null 2>&1 && command -v psktool >/dev/null 2>&1") != 0)
        return 0;
    if (!mkdtemp(tmpdir))
        return -1;
    /* srv/: the server's directory; cli/: a client with a certificate;
     * nocli/: a client with the CA only; empty/: nothing at all. */
    snprintf(cmd, sizeof cmd,
             "(set -e; cd '%s'; mkdir srv cli nocli empty;"
             "printf 'cn = test ca\\nca\\ncert_signing_key\\nexpiration_days = 2\\n' > ca.info;"
             "printf 'cn = localhost\\ndns_name = localhost\\ntls_www_server\\nsigning_key\\n"
             "encryption_key\\nexpiration_days = 2\\n' > srv.info;"
             "printf 'cn = client\\ntls_www_client\\nsigning_key\\nexpiration_days = 2\\n' > cli.info;"
             "certtool --generate-privkey --key-type=ecdsa --outfile ca-key.pem;"
             "certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info"
             " --outfile srv/ca-cert.pem;"
             "certtool --generate-privkey --key-type=ecdsa --outfile srv/server-key.pem;"
             "certtool --generate-certificate --load-privkey srv/server-key.pem"
             " --load-ca-certificate srv/ca-cert.pem --load-ca-privkey ca-key.pem"
             " --template srv.info --outfile srv/server-cert.pem;"
             "certtool --generate-privkey --key-type=ecdsa --outfile cli/client-key.pem;"
             "certtool --generate-certificate --load-privkey cli/client-key.pem"
             " --load-ca-certificate srv/ca-cert.pem --load-ca-privkey ca-key.pem"
             " --template cli.info --outfile cli/client-cert.pem;"
             "cp srv/ca-cert.pem cli/; cp srv/ca-cert.pem nocli/;"
             "psktool -u alice -p keys.psk; psktool -u alice -p wrong.psk;"
             ") >/dev/null 2>&1",
             tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_sock_tls: creating the test PKI in %s failed\n", tmpdir);
        return -1;
    }
    have_pki = true;
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[256];

    (void)state;
    if (have_pki) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            return -1;
    }
    return 0;
}

/* ---- One end of the connection, run in its own thread ------------------- */

enum exchange { EX_NONE, EX_ROUNDTRIP, EX_PREMATURE_EOF };

struct side {
    int fd;
    bool server;
    const struct nbd_tls_client_config *ccfg;
    struct nbd_tls_server_creds *screds;
    enum exchange ex;
    /* results */
    int hs_ret;
    int hs_errno;
    bool is_tls;
    char hs_err[1024];
    int ex_ret;         /* 0 = every check of the exchange passed */
    char ex_err[1024];
};

static void fill(unsigned char *buf, size_t len, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char)(x >> 16);
    }
}

static int fail_ex(struct side *sd, const char *what)
{
    snprintf(sd->ex_err, sizeof sd->ex_err, "%s %s: %s", sd->server ? "server" : "client", what,
             nbd_get_error());
    return -1;
}

/* One nbd_sock_recv step, waiting while a non-blocking socket says EAGAIN. */
static ssize_t recv_wait(struct nbd_sock *s, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = nbd_sock_recv(s, buf, len);
        if (n != -1 || errno != EAGAIN)
            return n;
        struct pollfd p = { .fd = nbd_sock_fd(s), .events = POLLIN };
        if (!nbd_sock_pending(s) && poll(&p, 1, TIMEOUT_MS) == 0)
            return -1;
    }
}

/* Client: send A, receive B, close_notify + half-close, expect EOF.
 * Server: receive A, send B, expect EOF, close_notify + half-close. */
static int roundtrip(struct side *sd, struct nbd_sock *s)
{
    unsigned char *mine = malloc(PAYLOAD), *theirs = malloc(PAYLOAD), *got = malloc(PAYLOAD);
    char c;
    int ret = -1;

    if (!mine || !theirs || !got) {
        snprintf(sd->ex_err, sizeof sd->ex_err, "out of memory");
        goto out;
    }
    fill(mine, PAYLOAD, sd->server ? 2 : 1);
    fill(theirs, PAYLOAD, sd->server ? 1 : 2);
    if (!sd->server) {
        /* The client runs non-blocking: one step that cannot move says
         * EAGAIN, and the helpers wait in poll(). */
        int fl = fcntl(nbd_sock_fd(s), F_GETFL);
        if (fl < 0 || fcntl(nbd_sock_fd(s), F_SETFL, fl | O_NONBLOCK) < 0) {
            snprintf(sd->ex_err, sizeof sd->ex_err, "client: fcntl: %s", strerror(errno));
            goto out;
        }
        ssize_t n = nbd_sock_recv(s, &c, 1);
        if (n == -1 && errno != EAGAIN) {
            fail_ex(sd, "recv on an idle non-blocking socket");
            goto out;
        }
        if (n != -1) {
            snprintf(sd->ex_err, sizeof sd->ex_err, "client: recv on an idle socket returned %zd", n);
            goto out;
        }
        if (nbd_sock_send_all(s, mine, PAYLOAD) < 0) {
            fail_ex(sd, "send_all");
            goto out;
        }
        if (nbd_sock_recv_all(s, got, PAYLOAD) < 0) {
            fail_ex(sd, "recv_all");
            goto out;
        }
        if (memcmp(got, theirs, PAYLOAD) != 0) {
            snprintf(sd->ex_err, sizeof sd->ex_err, "client: payload differs");
            goto out;
        }
        if (nbd_sock_shutdown_write(s) < 0) {
            fail_ex(sd, "shutdown_write");
            goto out;
        }
        if (recv_wait(s, &c, 1) != 0) {
            fail_ex(sd, "recv after the peer's shutdown did not return EOF");
            goto out;
        }
    } else {
        if (nbd_sock_recv_all(s, got, PAYLOAD) < 0) {
            fail_ex(sd, "recv_all");
            goto out;
        }
        if (memcmp(got, theirs, PAYLOAD) != 0) {
            snprintf(sd->ex_err, sizeof sd->ex_err, "server: payload differs");
            goto out;
        }
        if (nbd_sock_send_all(s, mine, PAYLOAD) < 0) {
            fail_ex(sd, "send_all");
            goto out;
        }
        if (nbd_sock_recv(s, &c, 1) != 0) {
            fail_ex(sd, "recv after the peer's shutdown did not return EOF");
            goto out;
        }
        if (nbd_sock_shutdown_write(s) < 0) {
            fail_ex(sd, "shutdown_write");
            goto out;
        }
    }
    ret = 0;
out:
    free(mine);
    free(theirs);
    free(got);
    return ret;
}

/* The server half-closes the TCP stream without close_notify (as qemu-nbd
 * does); the client must see a plain EOF, and recv_all a clear error. */
static int premature_eof(struct side *sd, struct nbd_sock *s)
{
    char buf[16];

    if (sd->server) {
        if (nbd_sock_send_all(s, "hello", 5) < 0)
            return fail_ex(sd, "send_all");
        if (shutdown(nbd_sock_fd(s), SHUT_WR) < 0)
            return fail_ex(sd, "shutdown");
        if (nbd_sock_recv(s, buf, 1) != 0) /* wait for the client to finish */
            return fail_ex(sd, "final recv");
        return 0;
    }
    if (nbd_sock_recv_all(s, buf, 5) < 0 || memcmp(buf, "hello", 5) != 0)
        return fail_ex(sd, "recv_all");
    if (nbd_sock_recv(s, buf, 1) != 0)
        return fail_ex(sd, "recv did not return EOF");
    if (nbd_sock_recv_all(s, buf, 1) == 0 || errno != ECONNRESET ||
        strstr(nbd_get_error(), "peer closed the connection") == NULL)
        return fail_ex(sd, "recv_all at EOF");
    return 0;
}

static void *side_main(void *arg)
{
    struct side *sd = arg;
    struct nbd_sock *s = nbd_sock_new(sd->fd);

    if (!s) {
        sd->hs_ret = -1;
        snprintf(sd->hs_err, sizeof sd->hs_err, "nbd_sock_new: %s", nbd_get_error());
        return NULL;
    }
    nbd_sock_set_timeout(s, TIMEOUT_MS);
    sd->hs_ret = sd->server ? nbd_sock_starttls_server(s, sd->screds) : nbd_sock_starttls_client(s, sd->ccfg);
    sd->hs_errno = errno;
    snprintf(sd->hs_err, sizeof sd->hs_err, "%s", sd->hs_ret < 0 ? nbd_get_error() : "");
    sd->is_tls = nbd_sock_is_tls(s);
    if (sd->hs_ret == 0) {
        if (sd->ex == EX_ROUNDTRIP)
            sd->ex_ret = roundtrip(sd, s);
        else if (sd->ex == EX_PREMATURE_EOF)
            sd->ex_ret = premature_eof(sd, s);
    }
    nbd_sock_close(s); /* on failure this also unblocks the peer */
    return NULL;
}

/* Runs a client and a server over a socketpair until both are done. */
static void run_pair(struct side *cli, struct side *srv)
{
    int sv[2];
    pthread_t tc, ts;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cli->fd = sv[0];
    cli->server = false;
    srv->fd = sv[1];
    srv->server = true;
    assert_int_equal(pthread_create(&ts, NULL, side_main, srv), 0);
    assert_int_equal(pthread_create(&tc, NULL, side_main, cli), 0);
    pthread_join(tc, NULL);
    pthread_join(ts, NULL);
    if (cli->hs_ret < 0)
        print_message("  client: %s\n", cli->hs_err);
    if (srv->hs_ret < 0)
        print_message("  server: %s\n", srv->hs_err);
}

static void assert_exchange_ok(const struct side *cli, const struct side *srv)
{
    if (cli->ex_ret != 0)
        fail_msg("%s", cli->ex_err);
    if (srv->ex_ret != 0)
        fail_msg("%s", srv->ex_err);
}

/* ---- Tests --------------------------------------------------------------- */

static void test_psk_roundtrip(void **state)
{
    char psk[512];
    struct nbd_tls_server_creds *creds;

    (void)state;
    if (!have_pki)
        skip();
    pathf(psk, sizeof psk, "keys.psk");
    creds = nbd_tls_server_creds_load(NULL, psk, false);
    assert_non_null(creds);

    struct nbd_tls_client_config cfg = { .psk_file = psk, .username = "alice" };
    struct side cli = { .ccfg = &cfg, .ex = EX_ROUNDTRIP };
    struct side srv = { .screds = creds, .ex = EX_ROUNDTRIP };
    run_pair(&cli, &srv);
    nbd_tls_server_creds_free(creds);
    assert_int_equal(cli.hs_ret, 0);
    assert_int_equal(srv.hs_ret, 0);
    assert_true(cli.is_tls);
    assert_true(srv.is_tls);
    assert_exchange_ok(&cli, &srv);
}

static void test_psk_wrong_key(void **state)
{
    char psk[512], wrong[512];
    struct nbd_tls_server_creds *creds;

    (void)state;
    if (!have_pki)
        skip();
    pathf(psk, sizeof psk, "keys.psk");
    pathf(wrong, sizeof wrong, "wrong.psk");
    creds = nbd_tls_server_creds_load(NULL, psk, false);
    assert_non_null(creds);

    struct nbd_tls_client_config cfg = { .psk_file = wrong, .username = "alice" };
    struct side cli = { .ccfg = &cfg, .ex = EX_ROUNDTRIP };
    struct side srv = { .screds = creds, .ex = EX_ROUNDTRIP };
    run_pair(&cli, &srv);
    nbd_tls_server_creds_free(creds);
    assert_int_equal(cli.hs_ret, -1);
    assert_int_equal(srv.hs_ret, -1);
    assert_non_null(strstr(cli.hs_err, "TLS handshake failed: "));
    assert_non_null(strstr(srv.hs_err, "TLS handshake failed: "));
    assert_int_not_equal(cli.hs_errno, 0);
    assert_int_not_equal(srv.hs_errno, 0);
}

static void test_psk_unknown_user(void **state)
{
    char psk[512];
    int sv[2];

    (void)state;
    if (!have_pki)
        skip();
    pathf(psk, sizeof psk, "keys.psk");
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct nbd_sock *s = nbd_sock_new(sv[0]);
    assert_non_null(s);
    struct nbd_tls_client_config cfg = { .psk_file = psk, .username = "bob" };
    assert_int_equal(nbd_sock_starttls_client(s, &cfg), -1);
    assert_int_equal(nbd_get_errno(), ENOENT);
    assert_non_null(strstr(nbd_get_error(), "no key for user bob in "));
    assert_non_null(strstr(nbd_get_error(), psk));
    nbd_sock_close(s);
    close(sv[1]);
}

static void x509_case(const char *client_dir, const char *hostname, struct side *cli, struct side *srv)
{
    char sdir[512], cdir[512];
    struct nbd_tls_server_creds *creds;

    pathf(sdir, sizeof sdir, "srv");
    pathf(cdir, sizeof cdir, client_dir);
    creds = nbd_tls_server_creds_load(sdir, NULL, true);
    if (!creds)
        fail_msg("loading the server credentials: %s", nbd_get_error());

    struct nbd_tls_client_config cfg = { .certificates_dir = cdir, .hostname = hostname, .verify_peer = true };
    cli->ccfg = &cfg;
    cli->ex = EX_ROUNDTRIP;
    srv->screds = creds;
    srv->ex = EX_ROUNDTRIP;
    run_pair(cli, srv);
    cli->ccfg = NULL;
    nbd_tls_server_creds_free(creds);
}

static void test_x509_ok(void **state)
{
    struct side cli = { 0 }, srv = { 0 };

    (void)state;
    if (!have_pki)
        skip();
    x509_case("cli", "localhost", &cli, &srv);
    assert_int_equal(cli.hs_ret, 0);
    assert_int_equal(srv.hs_ret, 0);
    assert_exchange_ok(&cli, &srv);
}

static void test_x509_wrong_host(void **state)
{
    struct side cli = { 0 }, srv = { 0 };

    (void)state;
    if (!have_pki)
        skip();
    x509_case("cli", "otherhost", &cli, &srv);
    assert_int_equal(cli.hs_ret, -1);
    assert_int_equal(srv.hs_ret, -1);
    assert_non_null(strstr(cli.hs_err, "TLS handshake failed: "));
    assert_non_null(strstr(cli.hs_err, "certificate"));
    assert_non_null(strstr(cli.hs_err, "otherhost"));
    assert_int_equal(cli.hs_errno, EACCES);
}

/* The server verifies peers; a client without a certificate is refused. */
static void test_x509_no_client_cert(void **state)
{
    struct side cli = { 0 }, srv = { 0 };

    (void)state;
    if (!have_pki)
        skip();
    x509_case("nocli", "localhost", &cli, &srv);
    assert_int_equal(srv.hs_ret, -1);
    assert_non_null(strstr(srv.hs_err, "TLS handshake failed: "));
    /* In TLS 1.3 the client's handshake is over before the server judges
     * its (empty) certificate: the refusal then arrives on the first read. */
    if (cli.hs_ret == 0) {
        assert_int_equal(cli.ex_ret, -1);
        print_message("  client: %s\n", cli.ex_err);
    }
}

static void test_missing_ca(void **state)
{
    char dir[512];
    int sv[2];

    (void)state;
    if (!have_pki)
        skip();
    pathf(dir, sizeof dir, "empty");
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct nbd_sock *s = nbd_sock_new(sv[0]);
    assert_non_null(s);
    struct nbd_tls_client_config cfg = { .certificates_dir = dir, .hostname = "localhost", .verify_peer = true };
    assert_int_equal(nbd_sock_starttls_client(s, &cfg), -1);
    assert_int_equal(nbd_get_errno(), ENOENT);
    assert_non_null(strstr(nbd_get_error(), "/empty/ca-cert.pem"));
    nbd_sock_close(s);
    close(sv[1]);

    assert_null(nbd_tls_server_creds_load(dir, NULL, true));
    assert_non_null(strstr(nbd_get_error(), "/empty/ca-cert.pem"));
    assert_null(nbd_tls_server_creds_load(NULL, NULL, true));
}

static void test_tls_premature_eof(void **state)
{
    char psk[512];
    struct nbd_tls_server_creds *creds;

    (void)state;
    if (!have_pki)
        skip();
    pathf(psk, sizeof psk, "keys.psk");
    creds = nbd_tls_server_creds_load(NULL, psk, false);
    assert_non_null(creds);

    struct nbd_tls_client_config cfg = { .psk_file = psk, .username = "alice" };
    struct side cli = { .ccfg = &cfg, .ex = EX_PREMATURE_EOF };
    struct side srv = { .screds = creds, .ex = EX_PREMATURE_EOF };
    run_pair(&cli, &srv);
    nbd_tls_server_creds_free(creds);
    assert_int_equal(cli.hs_ret, 0);
    assert_int_equal(srv.hs_ret, 0);
    assert_exchange_ok(&cli, &srv);
}

/* A peer that never answers: the handshake gives up after the timeout. */
static void test_handshake_timeout(void **state)
{
    char psk[512];
    int sv[2];

    (void)state;
    if (!have_pki)
        skip();
    pathf(psk, sizeof psk, "keys.psk");
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct nbd_sock *s = nbd_sock_new(sv[0]);
    assert_non_null(s);
    nbd_sock_set_timeout(s, 100);
    struct nbd_tls_client_config cfg = { .psk_file = psk, .username = "alice" };
    assert_int_equal(nbd_sock_starttls_client(s, &cfg), -1);
    assert_int_equal(nbd_get_errno(), ETIMEDOUT);
    print_message("  client: %s\n", nbd_get_error());
    nbd_sock_close(s);
    close(sv[1]);
}

/* Plain sockets: timeout, EOF after shutdown_write, EPIPE (not SIGPIPE). */
static void test_plain(void **state)
{
    int sv[2];
    char buf[8];

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct nbd_sock *a = nbd_sock_new(sv[0]);
    struct nbd_sock *b = nbd_sock_new(sv[1]);
    assert_non_null(a);
    assert_non_null(b);
    assert_false(nbd_sock_is_tls(a));
    assert_false(nbd_sock_pending(a));
    nbd_sock_set_timeout(a, 100);
    nbd_sock_set_timeout(b, 100);

    assert_int_equal(nbd_sock_send_all(a, "abc", 3), 0);
    assert_int_equal(nbd_sock_recv_all(b, buf, 3), 0);
    assert_memory_equal(buf, "abc", 3);

    assert_int_equal(nbd_sock_recv_all(b, buf, 1), -1);
    assert_int_equal(errno, ETIMEDOUT);
    assert_int_equal(nbd_get_errno(), ETIMEDOUT);

    assert_int_equal(nbd_sock_send_all(a, "xy", 2), 0);
    assert_int_equal(nbd_sock_shutdown_write(a), 0);
    assert_int_equal(nbd_sock_recv_all(b, buf, 2), 0);
    assert_int_equal(nbd_sock_recv(b, buf, 1), 0);
    assert_int_equal(nbd_sock_recv_all(b, buf, 1), -1);
    assert_int_equal(errno, ECONNRESET);
    assert_string_equal(nbd_get_error(), "peer closed the connection");

    nbd_sock_close(a);
    assert_int_equal(nbd_sock_send(b, "z", 1), -1);
    assert_int_equal(errno, EPIPE);
    nbd_sock_close(b);
    nbd_sock_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_psk_roundtrip),
        cmocka_unit_test(test_psk_wrong_key),
        cmocka_unit_test(test_psk_unknown_user),
        cmocka_unit_test(test_x509_ok),
        cmocka_unit_test(test_x509_wrong_host),
        cmocka_unit_test(test_x509_no_client_cert),
        cmocka_unit_test(test_missing_ca),
        cmocka_unit_test(test_tls_premature_eof),
        cmocka_unit_test(test_handshake_timeout),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
