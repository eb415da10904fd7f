#!/bin/bash
# TLS with X.509 certificates against qemu-nbd (tls-creds-x509) over TCP
# 127.0.0.1, server certificate for host name "localhost":
# nbds://localhost:PORT/?tls-certificates=DIR reports TLS and map works,
# also against a server that verifies its peers when DIR holds a client
# certificate; refused: a wrong host name (tls-hostname=other, or 127.0.0.1
# against the localhost certificate), a CA that did not sign the server's
# certificate, no client certificate for a verifying server, and plaintext.
. "$(dirname "$0")/lib.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires certtool --version
requires nbdinfo --version

make_x509 x
qemu-img create -q -f qcow2 disk.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x5a 1M 1M' disk.qcow2 >/dev/null

port=$(free_port)
start_qemu_nbd "$port" -t -r -f qcow2 \
    --object tls-creds-x509,id=tls1,endpoint=server,dir="$testdir/x/server",verify-peer=no \
    --tls-creds tls1 disk.qcow2
uri="nbds://localhost:$port/?tls-certificates=$testdir/x/ca-only"

run $NBDVAULT info "$uri" > info.txt
cat info.txt
grep -qx 'protocol: newstyle-fixed with TLS, using structured packets' info.txt ||
    fail "info does not report TLS"
run $NBDVAULT info --json "$uri" > info.json
"$PYTHON" -c 'import json; j = json.load(open("info.json"))
assert j["TLS"] is True and j["structured"] is True, j'
nbdinfo --json "$uri" > nbdinfo.json
json_equal nbdinfo.json info.json content can_block_status_payload extended_headers ||
    fail "info --json over TLS differs from nbdinfo"

nbdinfo --map "$uri" > map.nbdinfo
run $NBDVAULT map "$uri" > map.nbdvault
diff -u map.nbdinfo map.nbdvault || fail "map over TLS differs from nbdinfo --map"
grep -Eq '^ +1048576 +1048576 +0  data$' map.nbdvault || fail "map over TLS misses the data at 1M"
run $NBDCORE_TOOL pread "$uri" $((1 << 20)) 4096 > got.bin
head -c 4096 /dev/zero | tr '\0' '\132' > want.bin
cmp want.bin got.bin || fail "pread over TLS returned other data"

# A client directory with a certificate of its own works as well.
run $NBDVAULT map "nbds://localhost:$port/?tls-certificates=$testdir/x/client" > map2.nbdvault
cmp map.nbdvault map2.nbdvault || fail "map with a client certificate differs"

# The certificate is for localhost: any other name is refused, whether
# from the URI's host or from tls-hostname.
expect_fail 1 'not valid for host name "other"' \
    $NBDVAULT info "nbds://localhost:$port/?tls-certificates=$testdir/x/ca-only&tls-hostname=other"
expect_fail 1 'not valid for host name "127.0.0.1"' \
    $NBDVAULT info "nbds://127.0.0.1:$port/?tls-certificates=$testdir/x/ca-only"
expect_fail 1 'not valid for host name' \
    $NBDVAULT map "nbds://127.0.0.1:$port/?tls-certificates=$testdir/x/ca-only"
# ... unless tls-hostname names the certificate's host.
run $NBDVAULT info "nbds://127.0.0.1:$port/?tls-certificates=$testdir/x/ca-only&tls-hostname=localhost" >/dev/null

# A CA that did not sign the server's certificate.
expect_fail 1 'issuer is unknown|not trusted' \
    $NBDVAULT info "nbds://localhost:$port/?tls-certificates=$testdir/x/other-ca"
# ... which tls-verify-peer=false accepts: the refusal above was the check.
run $NBDVAULT info "nbds://localhost:$port/?tls-certificates=$testdir/x/other-ca&tls-verify-peer=false" >/dev/null
# A certificate directory without a CA.
mkdir empty
expect_fail 1 'ca-cert.pem' $NBDVAULT info "nbds://localhost:$port/?tls-certificates=$testdir/empty"

# Plaintext against the TLS server.
expect_fail 1 'requires TLS' $NBDVAULT info "nbd://localhost:$port/"

# A server that verifies its peers (verify-peer=yes): a client certificate
# signed by the CA gets in; without one the server closes the connection.
port2=$(free_port)
start_qemu_nbd "$port2" -t -r -f qcow2 \
    --object tls-creds-x509,id=tls2,endpoint=server,dir="$testdir/x/server",verify-peer=yes \
    --tls-creds tls2 disk.qcow2
run $NBDVAULT info --json "nbds://localhost:$port2/?tls-certificates=$testdir/x/client" > verify.json
"$PYTHON" -c 'import json; j = json.load(open("verify.json")); assert j["TLS"] is True, j'
run $NBDVAULT map "nbds://localhost:$port2/?tls-certificates=$testdir/x/client" > map3.nbdvault
cmp map.nbdvault map3.nbdvault || fail "map through the verifying server differs"
expect_fail 1 'closed the connection|TLS' $NBDVAULT info "nbds://localhost:$port2/?tls-certificates=$testdir/x/ca-only"
# ... and the message says what is likely missing.
expect_fail 1 'the server closed the TLS session: does it require a client certificate \(client-cert\.pem / client-key\.pem in the tls-certificates directory\)\?' \
    $NBDVAULT info "nbds://localhost:$port2/?tls-certificates=$testdir/x/ca-only"
expect_fail 1 'does it require a client certificate' \
    $NBDVAULT map "nbds://localhost:$port2/?tls-certificates=$testdir/x/ca-only"
# A client certificate signed by a CA the server does not trust.
mkdir stranger
cp x/ca-cert.pem stranger/
_certtool --generate-privkey --outfile stranger/client-key.pem
_certtool --generate-certificate --load-privkey stranger/client-key.pem \
    --load-ca-certificate x/other-ca/ca-cert.pem --load-ca-privkey x/other-ca-key.pem \
    --template x/client.info --outfile stranger/client-cert.pem
expect_fail 1 "the server closed the TLS session: did it reject our client certificate $testdir/stranger/client-cert\\.pem\\?" \
    $NBDVAULT info "nbds://localhost:$port2/?tls-certificates=$testdir/stranger"

# nbds:// against a plaintext server: STARTTLS refused, no fallback.
port3=$(free_port)
start_qemu_nbd "$port3" -t -r -f qcow2 disk.qcow2
expect_fail 1 'TLS is required.*(STARTTLS|refused)' \
    $NBDVAULT info "nbds://localhost:$port3/?tls-certificates=$testdir/x/ca-only"
expect_fail 1 'TLS is required' \
    $NBDVAULT map "nbds://localhost:$port3/?tls-certificates=$testdir/x/ca-only"
