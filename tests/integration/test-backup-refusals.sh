#!/bin/bash
# What backup refuses, with a clear error and exit 1, leaving the repository
# as it was: an export without the bitmap asked for, an export whose size
# changed since the last point (unless --full), a repository locked by
# another backup of the same disk; and the errors of restore on bad input.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires nbdkit --filter=delay memory 1M --version

M=1048576
repo=$testdir/repo
qemu-img create -q -f qcow2 disk.qcow2 $((16 * M))
qemu-io -f qcow2 -c "write -P 0x11 0 4M" disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
serve_disk disk.qcow2
backup_json p1.json "$uri" --repo "$repo" --disk vm1 --bitmap b0

# The export does not offer the bitmap.
expect_fail 1 'does not offer the dirty bitmap "nosuch"' \
    "$NBDVAULT" backup "$uri" --repo "$repo" --disk vm1 --bitmap nosuch
unserve

# The export's size changed: an incremental is refused, --full is not.
qemu-img resize -q -f qcow2 disk.qcow2 $((32 * M))
serve_disk disk.qcow2
expect_fail 1 "size .* differs from point" \
    "$NBDVAULT" backup "$uri" --repo "$repo" --disk vm1 --bitmap b0
backup_json p2.json "$uri" --repo "$repo" --disk vm1 --bitmap b0 --full
[ "$(jget p2.json kind)" = full ] || fail "--full did not give a full backup"
unserve

# Another backup of the same disk holds the lock: a slow server keeps the
# first one busy.
head -c $((16 * M)) /dev/urandom > noise.raw
start_nbdkit slow.sock -t 1 --filter=delay file noise.raw rdelay=300ms
slow="nbd+unix:///?socket=$testdir/slow.sock"
"$NBDVAULT" backup "$slow" --repo "$repo" --disk slow --connections 1 > first.out 2>&1 &
first=$!
# Wait until the first backup holds the lock (its point is running).
for i in $(seq 100); do
    sqlite3 "$repo/catalog.db" "select count(*) from locks" 2>/dev/null | grep -q '^[1-9]' && break
    sleep 0.1
done
expect_fail 1 "locked" "$NBDVAULT" backup "$slow" --repo "$repo" --disk slow
# Another disk may back up meanwhile.
serve_disk disk.qcow2
backup_json p3.json "$uri" --repo "$repo" --disk other
unserve
kill "$first" 2>/dev/null || :
wait "$first" 2>/dev/null || :

# Restore: unknown disk, unknown point, both or neither target.
expect_fail 1 'no disk named "nosuch"' "$NBDVAULT" restore --repo "$repo" --disk nosuch --output x.raw
expect_fail 1 "no restore point 999" "$NBDVAULT" restore --repo "$repo" --disk vm1 --point 999 --output x.raw
expect_fail 2 "exactly one of" "$NBDVAULT" restore --repo "$repo" --disk vm1
expect_fail 1 "not a repository" "$NBDVAULT" list --repo "$testdir/nothing"
[ ! -e x.raw ] || fail "a failed restore left an output file"
# A read-only export, and one smaller than the disk.
qemu-img create -q -f raw small.raw $((4 * M))
start_qemu_nbd small.sock -t -f raw small.raw
expect_fail 1 "smaller than the disk" \
    "$NBDVAULT" restore --repo "$repo" --disk vm1 --to "nbd+unix:///?socket=$testdir/small.sock"
qemu-img create -q -f raw big.raw $((64 * M))
start_qemu_nbd ro.sock -t -r -f raw big.raw
expect_fail 1 "read-only" \
    "$NBDVAULT" restore --repo "$repo" --disk vm1 --to "nbd+unix:///?socket=$testdir/ro.sock"
