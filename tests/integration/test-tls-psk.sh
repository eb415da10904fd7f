#!/bin/bash
# TLS with a pre-shared key against qemu-nbd (tls-creds-psk): info reports
# TLS and map works over nbds+unix://alice@/?...&tls-psk-file=; a wrong key,
# a user the server does not know, a user missing from our key file, a
# plaintext URI against the TLS server, and nbds:// against a plaintext
# server all fail with exit 1 and say why.
. "$(dirname "$0")/lib.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires psktool --version
requires nbdinfo --version

make_psk psk alice
make_psk wrong alice            # same user, another key
make_psk other bob              # a user qemu-nbd does not know

qemu-img create -q -f qcow2 disk.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 32M 64k' disk.qcow2 >/dev/null
start_qemu_nbd tls.sock -t -r -f qcow2 \
    --object tls-creds-psk,id=tls0,endpoint=server,dir="$testdir/psk" --tls-creds tls0 disk.qcow2
uri="nbds+unix://alice@/?socket=$testdir/tls.sock&tls-psk-file=$testdir/psk/keys.psk"

run $NBDVAULT info "$uri" > info.txt
cat info.txt
grep -qx 'protocol: newstyle-fixed with TLS, using structured packets' info.txt ||
    fail "info does not report TLS"
run $NBDVAULT info --json "$uri" > info.json
"$PYTHON" -c 'import json; j = json.load(open("info.json"))
assert j["TLS"] is True and j["structured"] is True, j
assert j["exports"][0]["export-size"] == 64 << 20, j'
nbdinfo --json "$uri" > nbdinfo.json
json_equal nbdinfo.json info.json content can_block_status_payload extended_headers ||
    fail "info --json over TLS differs from nbdinfo"

nbdinfo --map "$uri" > map.nbdinfo
run $NBDVAULT map "$uri" > map.nbdvault
diff -u map.nbdinfo map.nbdvault || fail "map over TLS differs from nbdinfo --map"
grep -Eq '^ +33554432 +65536 +0  data$' map.nbdvault || fail "map over TLS misses the data at 32M"

# Data read over TLS is the data.
run $NBDCORE_TOOL pread "$uri" 0 65536 > got.bin
head -c 65536 /dev/zero | tr '\0' '\021' > want.bin
cmp want.bin got.bin || fail "pread over TLS returned other data"

# The right user with the wrong key: the server ends the TLS handshake.
expect_fail 1 'TLS handshake failed' $NBDVAULT info "nbds+unix://alice@/?socket=$testdir/tls.sock&tls-psk-file=$testdir/wrong/keys.psk"
# A user the server does not know.
expect_fail 1 'TLS handshake failed' $NBDVAULT info "nbds+unix://bob@/?socket=$testdir/tls.sock&tls-psk-file=$testdir/other/keys.psk"
# A user our key file lacks: said before any byte of TLS is sent.
expect_fail 1 'no key for user bob' \
    $NBDVAULT info "nbds+unix://bob@/?socket=$testdir/tls.sock&tls-psk-file=$testdir/psk/keys.psk"
# No user in the URI: the login name is used, and is not in the file.
expect_fail 1 "no key for user $(id -un)" \
    $NBDVAULT map "nbds+unix:///?socket=$testdir/tls.sock&tls-psk-file=$testdir/psk/keys.psk"
# A key file that does not exist.
expect_fail 1 "$testdir/nosuch.psk" \
    $NBDVAULT info "nbds+unix://alice@/?socket=$testdir/tls.sock&tls-psk-file=$testdir/nosuch.psk"

# Without TLS against the TLS server: refused, and told that TLS is needed.
expect_fail 1 'requires TLS' $NBDVAULT info "nbd+unix:///?socket=$testdir/tls.sock"
expect_fail 1 'requires TLS' $NBDVAULT map "nbd+unix:///?socket=$testdir/tls.sock"
expect_fail 1 'requires TLS' $NBDCORE_TOOL pread "nbd+unix:///?socket=$testdir/tls.sock" 0 512

# TLS required (nbds) against a plaintext server: the server refuses
# STARTTLS, and we must not go on without TLS.
start_qemu_nbd plain.sock -t -r -f qcow2 disk.qcow2
plain="nbds+unix://alice@/?socket=$testdir/plain.sock&tls-psk-file=$testdir/psk/keys.psk"
expect_fail 1 'TLS is required.*(STARTTLS|refused)' $NBDVAULT info "$plain"
expect_fail 1 'TLS is required' $NBDVAULT map "$plain"
expect_fail 1 'TLS is required' $NBDCORE_TOOL pread "$plain" 0 512
[ ! -s expect.out ] || fail "pread printed data from a connection that had to be refused"

# The TLS server still serves after all those failures.
run $NBDVAULT map "$uri" > map2.nbdvault
cmp map.nbdvault map2.nbdvault || fail "map differs after the refused connections"
