#!/bin/bash
# A flipped byte in a pack, a truncated pack and a missing pack: verify
# reports each (exit 1, naming the pack and the points affected) and
# restore refuses to hand back wrong bytes.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version

M=1048576
repo=$testdir/repo
head -c $((6 * M)) /dev/urandom > rand.bin
qemu-img create -q -f qcow2 disk.qcow2 $((16 * M))
qemu-io -f qcow2 -c "write -P 0x11 0 2M" disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
serve_disk disk.qcow2
backup_json p1.json "$uri" --repo "$repo" --disk vm1 --bitmap b0
unserve
run "$NBDVAULT" verify --repo "$repo" || fail "a fresh repository does not verify"
# verify must exit 1 and print what is damaged.
verify_damaged ()
{
    local rc=0
    "$NBDVAULT" verify --repo "$repo" > verify.out 2>&1 || rc=$?
    cat verify.out
    [ "$rc" = 1 ] || fail "verify exited $rc on a damaged repository"
    grep -q "^damaged: " verify.out || fail "verify did not say what is damaged"
}
pack=$(find "$repo/packs" -name '*.pack' | sed -n 1p)
[ -n "$pack" ] || fail "no pack file"
cp "$pack" pack.orig

# A flipped byte in the middle of the pack.
"$PYTHON" - "$pack" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[len(b) // 3] ^= 0xff
open(p, 'wb').write(b)
PY
verify_damaged
grep -q "affects point 1" verify.out || fail "verify does not name the affected points"
expect_fail 1 "CRC|does not match|damaged|mismatch" \
    "$NBDVAULT" restore --repo "$repo" --disk vm1 --output out.raw
[ ! -e out.raw ] || fail "a refused restore left an output file"

# A truncated pack.
cp pack.orig "$pack"
truncate -s $(( $(stat -c %s pack.orig) / 2 )) "$pack"
verify_damaged
expect_fail 1 "truncated|short|missing|damaged|end of" \
    "$NBDVAULT" restore --repo "$repo" --disk vm1 --output out.raw

# A missing pack.
rm -f "$pack"
verify_damaged
grep -q "missing" verify.out || fail "verify does not say the pack is missing"
expect_fail 1 "missing" "$NBDVAULT" restore --repo "$repo" --disk vm1 --output out.raw

# Put back, all is well again.
cp pack.orig "$pack"
run "$NBDVAULT" verify --repo "$repo"
