#!/bin/bash
# `nbdvault serve` over TLS.  With --tls-psk-file on a Unix socket and with
# --tls-certificates (X.509, certificate for localhost) on TCP 127.0.0.1:
# libnbd (nbdinfo, nbdcopy with nbds URIs) and QEMU (qemu-img compare with
# tls-creds-psk / tls-creds-x509 objects) read the points bit-identically;
# a plaintext client is refused (TLS is required), so is a wrong key; with
# --tls-verify-peer a client certificate signed by the CA gets in and a
# client without one is refused.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/serve-lib.sh"
requires qemu-nbd --version
requires qemu-img --version
requires nbdinfo --version
requires nbdcopy --version
requires psktool --version
requires certtool --version

repo=$testdir/repo
make_chain "$repo" 2
p1=${pt[1]}
p2=${pt[2]}

# reads_ok URI_BASE (without the export) QUERY: nbdinfo reports TLS for both
# points, nbdcopy reads both, bit-identical.
reads_ok ()
{
    local base=$1 q=$2 k
    for k in 1 2; do
        nbdinfo --json "$base/vm1@${pt[k]}$q" > info.json
        "$PYTHON" -c 'import json; j = json.load(open("info.json"))
assert j["TLS"] is True, j
assert j["exports"][0]["export-size"] == '"$chain_size"', j' || fail "nbdinfo over TLS"
        run nbdcopy "$base/vm1@${pt[k]}$q" "tls-$k.raw"
        cmp "tls-$k.raw" "ref-$k.raw" || fail "nbdcopy over TLS: point $k differs"
        rm -f "tls-$k.raw"
    done
}

# ---- PSK on a Unix socket ------------------------------------------------------
make_psk psk alice
start_serve "$repo" "" --tls-psk-file "$testdir/psk/keys.psk"
reads_ok "nbds+unix://alice@" "?socket=$sock&tls-psk-file=$testdir/psk/keys.psk"
nbdinfo --map "nbds+unix://alice@/vm1@$p2?socket=$sock&tls-psk-file=$testdir/psk/keys.psk" > tls.map
check_serve alloc tls.map ref-2.raw q-2.alloc || fail "base:allocation over TLS"
# QEMU's client, username alice, key from psk/keys.psk.
run qemu-img compare --object "tls-creds-psk,id=tls0,endpoint=client,dir=$testdir/psk,username=alice" \
    --image-opts \
    "driver=nbd,server.type=unix,server.path=$sock,export=vm1@$p1,tls-creds=tls0" \
    "driver=raw,file.filename=ref-1.raw" || fail "qemu-img compare over TLS-PSK: point 1 differs"
# Plaintext: refused, not served.
# (libnbd shows the server's message only in its debug output.)
LIBNBD_DEBUG=1 expect_fail 1 'server error message: TLS is required' nbdinfo "nbd+unix:///vm1@$p1?socket=$sock"
expect_fail 1 'TLS negotiation required' qemu-img info -f raw "nbd+unix:///vm1@$p1?socket=$sock"
expect_fail 1 'requires TLS' "$NBDVAULT" info "nbd+unix:///vm1@$p1?socket=$sock"
# Another key for the same user.
make_psk otherpsk alice
expect_fail 1 'TLS|handshake|tls' nbdinfo \
    "nbds+unix://alice@/vm1@$p1?socket=$sock&tls-psk-file=$testdir/otherpsk/keys.psk"
stop_serve

# ---- X.509 on TCP ----------------------------------------------------------------
make_x509 x
port=$(free_port)
start_serve "$repo" "$port" --tls-certificates "$testdir/x/server"
reads_ok "nbds://localhost:$port" "?tls-certificates=$testdir/x/ca-only"
run qemu-img compare --object "tls-creds-x509,id=tls1,endpoint=client,dir=$testdir/x/ca-only" \
    --image-opts \
    "driver=nbd,server.type=inet,server.host=localhost,server.port=$port,export=vm1@$p2,tls-creds=tls1" \
    "driver=raw,file.filename=ref-2.raw" || fail "qemu-img compare over X.509: point 2 differs"
LIBNBD_DEBUG=1 expect_fail 1 'server error message: TLS is required' nbdinfo "nbd://localhost:$port/vm1@$p1"
expect_fail 1 'TLS negotiation required' qemu-img info -f raw "nbd://localhost:$port/vm1@$p1"
# A CA that did not sign the server's certificate.
expect_fail 1 'certificate|TLS|tls' nbdinfo "nbds://localhost:$port/vm1@$p1?tls-certificates=$testdir/x/other-ca"
stop_serve

# ---- X.509 with --tls-verify-peer ---------------------------------------------------
port=$(free_port)
start_serve "$repo" "$port" --tls-certificates "$testdir/x/server" --tls-verify-peer
reads_ok "nbds://localhost:$port" "?tls-certificates=$testdir/x/client"
run qemu-img compare --object "tls-creds-x509,id=tls2,endpoint=client,dir=$testdir/x/client" \
    --image-opts \
    "driver=nbd,server.type=inet,server.host=localhost,server.port=$port,export=vm1@$p1,tls-creds=tls2" \
    "driver=raw,file.filename=ref-1.raw" || fail "qemu-img compare with a client certificate: point 1 differs"
# No client certificate: refused.
expect_fail 1 'TLS|handshake|tls|certificate' \
    nbdinfo "nbds://localhost:$port/vm1@$p1?tls-certificates=$testdir/x/ca-only"
expect_fail 1 'closed the connection|TLS' \
    "$NBDVAULT" info "nbds://localhost:$port/vm1@$p1?tls-certificates=$testdir/x/ca-only"
# The server still serves well-behaved clients.
reads_ok "nbds://localhost:$port" "?tls-certificates=$testdir/x/client"
stop_serve
