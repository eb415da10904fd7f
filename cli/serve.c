/* serve.c: `nbdvault serve`. */
#include <signal.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"

static const char serve_help[] =
    "Usage: nbdvault serve --repo DIR (--socket PATH | --listen HOST:PORT)\n"
    "                      [--tls-certificates DIR | --tls-psk-file FILE]\n"
    "                      [--tls-verify-peer] [--max-connections N]\n"
    "                      [--idle-timeout SECONDS]\n"
    "\n"
    "Serves every restore point of the repository as a read-only NBD export\n"
    "named DISK@POINT, and DISK as that disk's newest point, until SIGTERM or\n"
    "SIGINT.  Each export offers base:allocation, qemu:allocation-depth and\n"
    "qemu:dirty-bitmap:since-P for every earlier point P of the disk (what\n"
    "changed after P), so that another nbdvault can back up from it\n"
    "incrementally:\n"
    "\n"
    "  nbdvault backup 'nbd+unix:///vm1@7?socket=S' --bitmap since-6 --repo OTHER --disk vm1\n"
    "\n"
    "  --socket PATH             a Unix socket\n"
    "  --listen HOST:PORT        TCP\n"
    "  --tls-certificates DIR    TLS with X.509: DIR/ca-cert.pem, server-cert.pem,\n"
    "                            server-key.pem (QEMU's layout)\n"
    "  --tls-psk-file FILE       TLS with pre-shared keys (\"user:hexkey\" lines)\n"
    "  --tls-verify-peer         X.509: require client certificates\n"
    "  --max-connections N       default 64; when all are taken, a new client\n"
    "                            evicts the connection idle longest (if over 1 s)\n"
    "  --idle-timeout SECONDS    close a connection that sends no request for this\n"
    "                            long (default 300; 0 = never)\n";

static void serve_ready(void *opaque)
{
    const char *where = opaque;
    fprintf(stderr, "nbdvault serve: listening on %s\n", where);
}

static void on_stop_signal(int sig)
{
    (void)sig;
    agent_serve_stop();
}

int cli_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "socket", required_argument, NULL, 's' },
        { "listen", required_argument, NULL, 'l' },
        { "tls-certificates", required_argument, NULL, 'x' },
        { "tls-psk-file", required_argument, NULL, 'p' },
        { "tls-verify-peer", no_argument, NULL, 'v' },
        { "max-connections", required_argument, NULL, 'm' },
        { "idle-timeout", required_argument, NULL, 'i' },
        { "config", required_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *config = NULL;
    struct agent_serve_opts o = { 0 };
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 's': o.socket_path = optarg; break;
        case 'l': o.listen = optarg; break;
        case 'x': o.tls_certificates = optarg; break;
        case 'p': o.tls_psk_file = optarg; break;
        case 'v': o.tls_verify_peer = true; break;
        case 'm':
            if (cli_parse_unsigned(optarg, 100000, &o.max_connections) < 0 || !o.max_connections)
                return cli_usage_error("serve", "bad --max-connections \"%s\"", optarg);
            break;
        case 'i': {
            unsigned secs;
            if (cli_parse_unsigned(optarg, 86400 * 7, &secs) < 0)
                return cli_usage_error("serve", "bad --idle-timeout \"%s\" (seconds)", optarg);
            o.idle_timeout_ms = secs ? (int)secs * 1000 : -1;
            break;
        }
        case 'C': config = optarg; break;
        case 'h': fputs(serve_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("serve");
        }
    }
    if (optind != argc)
        return cli_usage_error("serve", "unexpected argument \"%s\"", argv[optind]);
    if (!o.socket_path == !o.listen)
        return cli_usage_error("serve", "give exactly one of --socket PATH and --listen HOST:PORT");
    if (o.tls_certificates && o.tls_psk_file)
        return cli_usage_error("serve", "give at most one of --tls-certificates and --tls-psk-file");
    int code;
    struct agent_repo *r = cli_open_repo("serve", repo, config, &code);
    if (!r)
        return code;
    /* SIGTERM and SIGINT end the server cleanly (its connections first). */
    struct sigaction sa = { .sa_handler = on_stop_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    o.ready = serve_ready;
    o.opaque = (void *)(o.socket_path ? o.socket_path : o.listen);
    int ret = CLI_EXIT_OK;
    if (agent_serve(r, &o) < 0)
        ret = cli_error("serve", "%s", error_msg());
    agent_repo_close(r);
    return ret;
}
