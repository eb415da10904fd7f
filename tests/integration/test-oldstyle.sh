#!/bin/bash
# An oldstyle server (nbdkit --oldstyle): read as a plain export, but never
# by a URI that requires TLS (nbds://), since oldstyle cannot do TLS: a
# downgrade to it is refused (libnbd's CVE-2019-14842 was that downgrade).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
requires nbdkit --oldstyle memory 1M --version

head -c 1048576 /dev/urandom > data.bin
start_nbdkit old.sock --oldstyle file data.bin
uri="nbd+unix:///?socket=$testdir/old.sock"
run "$NBDVAULT" info "$uri" | tee info.out
grep -q "^protocol: oldstyle" info.out || fail "info does not say oldstyle"
run "$NBDCORE_TOOL" download "$uri" out.bin 1
cmp out.bin data.bin || fail "oldstyle download differs"
make_psk keys alice
expect_fail 1 "TLS is required .* oldstyle" \
    "$NBDVAULT" info "nbds+unix://alice@/?socket=$testdir/old.sock&tls-psk-file=$testdir/keys/keys.psk"
