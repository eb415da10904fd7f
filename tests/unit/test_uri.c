/* test_uri.c: nbd_uri_parse / nbd_uri_clear (nbdcore/uri.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdcore/nbdcore.h"

#define UNUSED __attribute__((unused))

/* Parses s, which must succeed; the caller checks and clears *u. */
static void parse_ok(const char *s, struct nbd_uri *u)
{
    if (nbd_uri_parse(s, u) != 0)
        fail_msg("nbd_uri_parse(\"%s\") failed: %s", s, nbd_get_error());
}

/* Parses s, which must fail with EINVAL and a message containing word;
 * the struct must be left cleared. */
static void parse_bad(const char *s, const char *word)
{
    struct nbd_uri u, zero;

    memset(&u, 0xa5, sizeof u);  /* garbage: the parser must not free it */
    memset(&zero, 0, sizeof zero);
    if (nbd_uri_parse(s, &u) != -1)
        fail_msg("nbd_uri_parse(\"%s\") succeeded, expected an error about \"%s\"", s, word);
    assert_int_equal(nbd_get_errno(), EINVAL);
    assert_int_equal(errno, EINVAL);
    if (!strstr(nbd_get_error(), word))
        fail_msg("nbd_uri_parse(\"%s\"): error \"%s\" does not mention \"%s\"",
                 s, nbd_get_error(), word);
    if (!strstr(nbd_get_error(), "NBD URI"))
        fail_msg("error \"%s\" does not say it is about an NBD URI", nbd_get_error());
    assert_memory_equal(&u, &zero, sizeof u);
}

/* ---- Schemes ----------------------------------------------------------- */

static void test_scheme_nbd(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd://example.com", &u);
    assert_false(u.tls);
    assert_int_equal(u.transport, NBD_TRANSPORT_TCP);
    assert_string_equal(u.host, "example.com");
    assert_null(u.port);
    assert_null(u.user);
    assert_null(u.socket);
    assert_string_equal(u.export_name, "");
    assert_null(u.tls_certificates);
    assert_null(u.tls_psk_file);
    assert_null(u.tls_hostname);
    assert_int_equal(u.tls_verify_peer, -1);
    nbd_uri_clear(&u);
    assert_null(u.host);
    assert_null(u.export_name);
}

static void test_scheme_nbds(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbds://example.com:10810/disk", &u);
    assert_true(u.tls);
    assert_int_equal(u.transport, NBD_TRANSPORT_TCP);
    assert_string_equal(u.host, "example.com");
    assert_string_equal(u.port, "10810");
    assert_string_equal(u.export_name, "disk");
    nbd_uri_clear(&u);
}

static void test_scheme_unix(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd+unix:///disk?socket=/tmp/nbd.sock", &u);
    assert_false(u.tls);
    assert_int_equal(u.transport, NBD_TRANSPORT_UNIX);
    assert_null(u.host);
    assert_null(u.port);
    assert_string_equal(u.socket, "/tmp/nbd.sock");
    assert_string_equal(u.export_name, "disk");
    nbd_uri_clear(&u);

    parse_ok("nbds+unix:///?socket=sock", &u);
    assert_true(u.tls);
    assert_int_equal(u.transport, NBD_TRANSPORT_UNIX);
    assert_string_equal(u.socket, "sock");
    assert_string_equal(u.export_name, "");
    nbd_uri_clear(&u);

    /* No path at all, only the query. */
    parse_ok("nbd+unix://?socket=s", &u);
    assert_string_equal(u.export_name, "");
    assert_string_equal(u.socket, "s");
    nbd_uri_clear(&u);
}

static void test_scheme_vsock(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd+vsock:///", &u);
    assert_false(u.tls);
    assert_int_equal(u.transport, NBD_TRANSPORT_VSOCK);
    assert_string_equal(u.host, "2");          /* the hypervisor */
    assert_null(u.port);
    assert_string_equal(u.export_name, "");
    nbd_uri_clear(&u);

    parse_ok("nbds+vsock://3:1234/exp", &u);
    assert_true(u.tls);
    assert_int_equal(u.transport, NBD_TRANSPORT_VSOCK);
    assert_string_equal(u.host, "3");
    assert_string_equal(u.port, "1234");
    assert_string_equal(u.export_name, "exp");
    nbd_uri_clear(&u);

    /* vsock ports are 32-bit. */
    parse_ok("nbd+vsock://4294967295:4294967294", &u);
    assert_string_equal(u.host, "4294967295");
    assert_string_equal(u.port, "4294967294");
    nbd_uri_clear(&u);
}

static void test_scheme_case(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("NBD://h/x", &u);
    assert_false(u.tls);
    assert_int_equal(u.transport, NBD_TRANSPORT_TCP);
    nbd_uri_clear(&u);

    parse_ok("NbDs+UnIx:///x?socket=s", &u);
    assert_true(u.tls);
    assert_int_equal(u.transport, NBD_TRANSPORT_UNIX);
    assert_string_equal(u.export_name, "x");
    nbd_uri_clear(&u);
}

/* ---- Authority --------------------------------------------------------- */

static void test_ipv6(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd://[::1]/disk", &u);
    assert_string_equal(u.host, "::1");
    assert_null(u.port);
    nbd_uri_clear(&u);

    parse_ok("nbds://[2001:db8::1]:10809", &u);
    assert_string_equal(u.host, "2001:db8::1");
    assert_string_equal(u.port, "10809");
    assert_string_equal(u.export_name, "");
    nbd_uri_clear(&u);

    parse_ok("nbd://[::ffff:192.0.2.1]:99/", &u);
    assert_string_equal(u.host, "::ffff:192.0.2.1");
    assert_string_equal(u.port, "99");
    nbd_uri_clear(&u);

    /* RFC 6874 zone identifier. */
    parse_ok("nbd://[fe80::1%25eth0]/", &u);
    assert_string_equal(u.host, "fe80::1%eth0");
    nbd_uri_clear(&u);
}

static void test_ports(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd://h:1", &u);
    assert_string_equal(u.port, "1");
    nbd_uri_clear(&u);

    parse_ok("nbd://h:65535/", &u);
    assert_string_equal(u.port, "65535");
    nbd_uri_clear(&u);

    parse_ok("nbd://h:010809/", &u);            /* leading zeros normalised */
    assert_string_equal(u.port, "10809");
    nbd_uri_clear(&u);

    parse_ok("nbd://h:/", &u);                  /* empty port = default */
    assert_null(u.port);
    assert_string_equal(u.host, "h");
    nbd_uri_clear(&u);

    parse_ok("nbd://192.0.2.7:10809?", &u);
    assert_string_equal(u.host, "192.0.2.7");
    assert_string_equal(u.port, "10809");
    assert_string_equal(u.export_name, "");
    nbd_uri_clear(&u);
}

static void test_default_host(void **state UNUSED)
{
    struct nbd_uri u;

    /* Like libnbd and QEMU: no host means localhost. */
    parse_ok("nbd:///disk", &u);
    assert_string_equal(u.host, "localhost");
    assert_string_equal(u.export_name, "disk");
    nbd_uri_clear(&u);

    parse_ok("nbd://:10810", &u);
    assert_string_equal(u.host, "localhost");
    assert_string_equal(u.port, "10810");
    nbd_uri_clear(&u);
}

static void test_user(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbds://alice@example.com/disk", &u);
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.host, "example.com");
    nbd_uri_clear(&u);

    parse_ok("nbds+unix://alice@/?socket=/tmp/nbd.sock&tls-certificates=certs", &u);
    assert_true(u.tls);
    assert_string_equal(u.user, "alice");
    assert_null(u.host);
    assert_string_equal(u.socket, "/tmp/nbd.sock");
    assert_string_equal(u.tls_certificates, "certs");
    nbd_uri_clear(&u);

    parse_ok("nbds://bob%40corp%3A1@[::1]:4/", &u);
    assert_string_equal(u.user, "bob@corp:1");
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.port, "4");
    nbd_uri_clear(&u);

    parse_ok("nbd://@h/", &u);                  /* empty user = none */
    assert_null(u.user);
    assert_string_equal(u.host, "h");
    nbd_uri_clear(&u);
}

/* ---- Export name ------------------------------------------------------- */

/* The table of the NBD URI specification, "NBD URI export name". */
static void test_spec_export_examples(void **state UNUSED)
{
    static const struct { const char *uri, *export_name; } t[] = {
        { "nbd://example.com/disk",           "disk" },
        { "nbd+unix:///disk?socket=sock",     "disk" },
        { "nbd://example.com/",               "" },
        { "nbd://example.com",                "" },
        { "nbd://example.com//disk",          "/disk" },
        { "nbd://example.com/hello%20world",  "hello world" },
    };
    size_t i;

    for (i = 0; i < sizeof t / sizeof t[0]; i++) {
        struct nbd_uri u;
        parse_ok(t[i].uri, &u);
        assert_string_equal(u.export_name, t[i].export_name);
        nbd_uri_clear(&u);
    }
}

/* The examples at the top of the spec and of libnbd's nbd_connect_uri. */
static void test_spec_examples(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd://example.com:10809/export", &u);
    assert_int_equal(u.transport, NBD_TRANSPORT_TCP);
    assert_string_equal(u.host, "example.com");
    assert_string_equal(u.port, "10809");
    assert_string_equal(u.export_name, "export");
    nbd_uri_clear(&u);

    parse_ok("nbd+unix:///export?socket=nbd.sock", &u);
    assert_int_equal(u.transport, NBD_TRANSPORT_UNIX);
    assert_string_equal(u.socket, "nbd.sock");
    assert_string_equal(u.export_name, "export");
    nbd_uri_clear(&u);

    parse_ok("nbd+unix:///foo?socket=/tmp/nbd.sock", &u);
    assert_string_equal(u.export_name, "foo");
    assert_string_equal(u.socket, "/tmp/nbd.sock");
    nbd_uri_clear(&u);
}

static void test_export_decoding(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd://h/a%2Fb%3fc%23d%25e", &u);
    assert_string_equal(u.export_name, "a/b?c#d%e");
    nbd_uri_clear(&u);

    parse_ok("nbd://h/caf%C3%A9", &u);          /* UTF-8 bytes */
    assert_string_equal(u.export_name, "caf\xc3\xa9");
    nbd_uri_clear(&u);

    parse_ok("nbd://h/a/b/c/", &u);
    assert_string_equal(u.export_name, "a/b/c/");
    nbd_uri_clear(&u);

    parse_ok("nbd://h/with:colon@and!sub$delims'()*+,;=", &u);
    assert_string_equal(u.export_name, "with:colon@and!sub$delims'()*+,;=");
    nbd_uri_clear(&u);

    parse_ok("nbd://h/+plus", &u);              /* '+' is not a space */
    assert_string_equal(u.export_name, "+plus");
    nbd_uri_clear(&u);
}

static void test_export_max_length(void **state UNUSED)
{
    struct nbd_uri u;
    size_t prefix = strlen("nbd://h/");
    char *s = malloc(prefix + NBD_MAX_STRING + 2);

    assert_non_null(s);
    memcpy(s, "nbd://h/", prefix);
    memset(s + prefix, 'x', NBD_MAX_STRING);
    s[prefix + NBD_MAX_STRING] = '\0';
    parse_ok(s, &u);
    assert_int_equal(strlen(u.export_name), NBD_MAX_STRING);
    nbd_uri_clear(&u);

    s[prefix + NBD_MAX_STRING] = 'x';
    s[prefix + NBD_MAX_STRING + 1] = '\0';
    parse_bad(s, "export name longer");
    free(s);
}

/* ---- Query ------------------------------------------------------------- */

static void test_socket_decoding(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd+unix:///?socket=/run/my%20dir/nbd%3Bsock", &u);
    assert_string_equal(u.socket, "/run/my dir/nbd;sock");
    nbd_uri_clear(&u);

    /* '/' and '?' may appear in a query unescaped. */
    parse_ok("nbd+unix:///e?socket=/a/b?c", &u);
    assert_string_equal(u.socket, "/a/b?c");
    assert_string_equal(u.export_name, "e");
    nbd_uri_clear(&u);

    /* An escaped '&' or '=' belongs to the value. */
    parse_ok("nbd+unix:///?socket=a%26b%3Dc&tls-hostname=x", &u);
    assert_string_equal(u.socket, "a&b=c");
    assert_string_equal(u.tls_hostname, "x");
    nbd_uri_clear(&u);

    /* Only the first '=' separates. */
    parse_ok("nbd+unix:///?socket=a=b", &u);
    assert_string_equal(u.socket, "a=b");
    nbd_uri_clear(&u);

    /* Even a percent-encoded name is matched. */
    parse_ok("nbd+unix:///?%73ocket=s", &u);
    assert_string_equal(u.socket, "s");
    nbd_uri_clear(&u);
}

static void test_tls_params(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbds://h/e?tls-certificates=/etc/pki/nbd&tls-hostname=server.example.com"
             "&tls-verify-peer=false", &u);
    assert_string_equal(u.tls_certificates, "/etc/pki/nbd");
    assert_string_equal(u.tls_hostname, "server.example.com");
    assert_null(u.tls_psk_file);
    assert_int_equal(u.tls_verify_peer, 0);
    nbd_uri_clear(&u);

    parse_ok("nbds://h/?tls-psk-file=/etc/nbd/keys.psk&tls-type=psk", &u);
    assert_string_equal(u.tls_psk_file, "/etc/nbd/keys.psk");
    nbd_uri_clear(&u);

    parse_ok("nbds://h/?tls-type=x509&tls-certificates=%2Fd%20ir", &u);
    assert_string_equal(u.tls_certificates, "/d ir");
    nbd_uri_clear(&u);

    /* On a non-TLS URI, tls-* parameters are kept (opportunistic TLS). */
    parse_ok("nbd://h/?tls-certificates=c&tls-verify-peer=1", &u);
    assert_false(u.tls);
    assert_string_equal(u.tls_certificates, "c");
    assert_int_equal(u.tls_verify_peer, 1);
    nbd_uri_clear(&u);
}

static void test_tls_verify_peer_values(void **state UNUSED)
{
    static const struct { const char *v; int want; } t[] = {
        { "1", 1 }, { "true", 1 }, { "yes", 1 }, { "on", 1 }, { "TRUE", 1 }, { "On", 1 },
        { "0", 0 }, { "false", 0 }, { "no", 0 }, { "off", 0 }, { "False", 0 }, { "NO", 0 },
    };
    size_t i;

    for (i = 0; i < sizeof t / sizeof t[0]; i++) {
        char s[64];
        struct nbd_uri u;
        snprintf(s, sizeof s, "nbds://h/?tls-verify-peer=%s", t[i].v);
        parse_ok(s, &u);
        assert_int_equal(u.tls_verify_peer, t[i].want);
        nbd_uri_clear(&u);
    }
    parse_bad("nbds://h/?tls-verify-peer=maybe", "tls-verify-peer");
    parse_bad("nbds://h/?tls-verify-peer", "tls-verify-peer");
    parse_bad("nbds://h/?tls-verify-peer=2", "tls-verify-peer");
}

static void test_query_separators_and_repeats(void **state UNUSED)
{
    struct nbd_uri u;

    /* ';' separates like '&' (libnbd); empty pieces are skipped. */
    parse_ok("nbd+unix:///?&&socket=s;tls-hostname=h;;&", &u);
    assert_string_equal(u.socket, "s");
    assert_string_equal(u.tls_hostname, "h");
    nbd_uri_clear(&u);

    /* The last of a repeated parameter wins (libnbd). */
    parse_ok("nbd+unix:///?socket=first&socket=second&tls-verify-peer=0&tls-verify-peer=1", &u);
    assert_string_equal(u.socket, "second");
    assert_int_equal(u.tls_verify_peer, 1);
    nbd_uri_clear(&u);
}

static void test_unknown_params_ignored(void **state UNUSED)
{
    struct nbd_uri u;

    parse_ok("nbd://h/e?x-experimental=1&foo=bar&flag&=nameless", &u);
    assert_string_equal(u.host, "h");
    assert_string_equal(u.export_name, "e");
    nbd_uri_clear(&u);

    parse_ok("nbd+unix:///?foo&socket=s&bar=%41", &u);
    assert_string_equal(u.socket, "s");
    nbd_uri_clear(&u);
}

/* ---- Rejections -------------------------------------------------------- */

static void test_bad_scheme(void **state UNUSED)
{
    parse_bad("http://example.com/", "unknown scheme");
    parse_bad("nbd+tcp://example.com/", "unknown scheme");
    parse_bad("nbdx://h/", "nbdx");
    parse_bad("", "no scheme");
    parse_bad("example.com:10809", "unknown scheme");
    parse_bad("/tmp/nbd.sock", "no scheme");
    parse_bad("localhost", "no scheme");
    parse_bad("://h/", "no scheme");
    parse_bad("1nbd://h/", "no scheme");
    /* scheme://authority is required, as in libnbd. */
    parse_bad("nbd:export", "nbd://");
    parse_bad("nbd:/export", "nbd://");
    parse_bad("nbd+unix:/?socket=s", "nbd+unix://");
    parse_bad("nbd", "no scheme");
}

static void test_unix_socket_rules(void **state UNUSED)
{
    parse_bad("nbd+unix:///disk", "nbd+unix:// needs a socket= query parameter");
    parse_bad("nbds+unix:///?tls-certificates=c", "nbds+unix:// needs a socket=");
    parse_bad("nbd+unix:///?socket=", "socket= needs a value");
    parse_bad("nbd+unix://localhost/?socket=s", "no host or port");
    parse_bad("nbd+unix://:10809/?socket=s", "no host or port");
    parse_bad("nbd+unix://:/?socket=s", "no host or port");
    parse_bad("nbd+unix://alice@host/?socket=s", "no host or port");
    parse_bad("nbd+unix://[::1]/?socket=s", "no host or port");
    /* Abstract sockets would need a NUL byte. */
    parse_bad("nbd+unix:///?socket=%00/abstract", "%00");
}

static void test_socket_on_tcp(void **state UNUSED)
{
    parse_bad("nbd://h/?socket=/tmp/s", "socket=");
    parse_bad("nbd://h/?socket=/tmp/s", "nbd+unix://");
    parse_bad("nbds://h/?socket=/tmp/s", "nbds+unix://");
    parse_bad("nbd+vsock:///?socket=/tmp/s", "socket=");
}

static void test_bad_port(void **state UNUSED)
{
    parse_bad("nbd://h:0/", "bad port");
    parse_bad("nbd://h:65536/", "between 1 and 65535");
    parse_bad("nbd://h:99999999999999999999999999/", "bad port");
    parse_bad("nbd://h:-1/", "bad port");
    parse_bad("nbd://h:+1/", "bad port");
    parse_bad("nbd://h:port/", "not a decimal number");
    parse_bad("nbd://h:10809x/", "bad port");
    parse_bad("nbd://h:%31/", "bad port");
    parse_bad("nbd://[::1]:abc/", "bad port");
    parse_bad("nbd+vsock://2:0/", "bad port");
    parse_bad("nbd+vsock://2:4294967295/", "bad port");
    parse_bad("nbd+vsock://2:18446744073709551617/", "bad port");
}

static void test_bad_authority(void **state UNUSED)
{
    parse_bad("nbd://::1/", "brackets");
    parse_bad("nbd://h:1:2/", "more than one ':'");
    parse_bad("nbd://[::1/", "closing ']'");
    parse_bad("nbd://[::1]x/", "after the IPv6 address");
    parse_bad("nbd://[hello]/", "IPv6");
    parse_bad("nbd://[1.2.3.4]/", "IPv6");
    parse_bad("nbd://[v1.x]/", "IPv6");
    parse_bad("nbd://[fe80::1%eth0]/", "zone");
    parse_bad("nbd://[fe80::1%25]/", "zone");
    parse_bad("nbd://h]/", "host name");
    parse_bad("nbd://a@b@h/", "more than one '@'");
    parse_bad("nbd://alice:secret@h/", "password");
    assert_null(strstr(nbd_get_error(), "secret"));
    parse_bad("nbd+vsock://host/", "CID");
    parse_bad("nbd+vsock://4294967296/", "CID");
    parse_bad("nbd+vsock://[::1]/", "CID");
}

static void test_bad_escape(void **state UNUSED)
{
    parse_bad("nbd://h/a%", "bad percent escape");
    parse_bad("nbd://h/a%2", "bad percent escape");
    parse_bad("nbd://h/a%zz", "bad percent escape");
    parse_bad("nbd://h/a%g0b", "export name");
    parse_bad("nbd+unix:///?socket=%ZZ", "bad percent escape");
    parse_bad("nbd+unix:///?socket=ok&%=x", "bad percent escape");
    parse_bad("nbd://al%ice@h/", "user name");
    parse_bad("nbd://h%/", "host name");
}

static void test_nul(void **state UNUSED)
{
    parse_bad("nbd://h/a%00b", "%00");
    parse_bad("nbd://h/%00", "export name");
    parse_bad("nbd+unix:///?socket=a%00", "%00");
    parse_bad("nbd://u%00@h/", "%00");
    parse_bad("nbd://h%00/", "%00");
    parse_bad("nbds://h/?tls-hostname=%00", "%00");
}

static void test_bad_characters(void **state UNUSED)
{
    parse_bad("nbd://h/hello world", "' '");
    parse_bad("nbd://h/a\"b", "not allowed in a URI");
    parse_bad("nbd://h/a\\b", "%5C");
    parse_bad("nbd://h/a\tb", "0x09");
    parse_bad("nbd://h/caf\xc3\xa9", "0xc3");
    parse_bad("nbd://h/a{b}", "not allowed");
    parse_bad("nbd://h/a[b]", "'['");
    parse_bad("nbd+unix:///?socket=[x]", "'['");
}

static void test_fragment(void **state UNUSED)
{
    parse_bad("nbd://h/disk#1", "fragment");
    parse_bad("nbd://h/#", "fragment");
    parse_bad("nbd+unix:///?socket=s#x", "%23");
}

static void test_bad_tls_params(void **state UNUSED)
{
    parse_bad("nbds://h/?tls-certificates=", "tls-certificates= needs a value");
    parse_bad("nbds://h/?tls-psk-file", "tls-psk-file= needs a value");
    parse_bad("nbds://h/?tls-hostname=", "tls-hostname");
    parse_bad("nbds://h/?tls-username=bob", "unknown TLS query parameter tls-username");
    parse_bad("nbds://h/?tls-priority=NORMAL", "tls-priority");
    parse_bad("nbds://h/?tls-type=anon", "tls-type=anon");
    parse_bad("nbds://h/?tls-type=psk", "tls-psk-file");
    parse_bad("nbds://h/?tls-type=x509&tls-psk-file=k", "conflicts");
}

/* ---- Ownership --------------------------------------------------------- */

static void test_clear(void **state UNUSED)
{
    struct nbd_uri u, zero;

    memset(&zero, 0, sizeof zero);
    parse_ok("nbds://alice@h:1/e?tls-certificates=c&tls-psk-file=p&tls-hostname=n", &u);
    nbd_uri_clear(&u);
    assert_memory_equal(&u, &zero, sizeof u);
    nbd_uri_clear(&u);                          /* twice is harmless */
    nbd_uri_clear(NULL);

    parse_ok("nbd+unix:///e?socket=s", &u);
    nbd_uri_clear(&u);
    assert_memory_equal(&u, &zero, sizeof u);

    assert_int_equal(nbd_uri_parse(NULL, &u), -1);
    assert_int_equal(nbd_get_errno(), EINVAL);
    assert_memory_equal(&u, &zero, sizeof u);
}

/* The message quotes the URI, cut short and printable. */
static void test_error_message(void **state UNUSED)
{
    char s[600];

    parse_bad("nbd+unix:///x", "NBD URI \"nbd+unix:///x\": nbd+unix:// needs a socket= query parameter");
    memset(s, 'a', sizeof s);
    memcpy(s, "bad://", 6);
    s[sizeof s - 1] = '\0';
    parse_bad(s, "...\": unknown scheme \"bad\"");
    parse_bad("nbd://h/\x01", "\"nbd://h/?\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scheme_nbd),
        cmocka_unit_test(test_scheme_nbds),
        cmocka_unit_test(test_scheme_unix),
        cmocka_unit_test(test_scheme_vsock),
        cmocka_unit_test(test_scheme_case),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_ports),
        cmocka_unit_test(test_default_host),
        cmocka_unit_test(test_user),
        cmocka_unit_test(test_spec_export_examples),
        cmocka_unit_test(test_spec_examples),
        cmocka_unit_test(test_export_decoding),
        cmocka_unit_test(test_export_max_length),
        cmocka_unit_test(test_socket_decoding),
        cmocka_unit_test(test_tls_params),
        cmocka_unit_test(test_tls_verify_peer_values),
        cmocka_unit_test(test_query_separators_and_repeats),
        cmocka_unit_test(test_unknown_params_ignored),
        cmocka_unit_test(test_bad_scheme),
        cmocka_unit_test(test_unix_socket_rules),
        cmocka_unit_test(test_socket_on_tcp),
        cmocka_unit_test(test_bad_port),
        cmocka_unit_test(test_bad_authority),
        cmocka_unit_test(test_bad_escape),
        cmocka_unit_test(test_nul),
        cmocka_unit_test(test_bad_characters),
        cmocka_unit_test(test_fragment),
        cmocka_unit_test(test_bad_tls_params),
        cmocka_unit_test(test_clear),
        cmocka_unit_test(test_error_message),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
