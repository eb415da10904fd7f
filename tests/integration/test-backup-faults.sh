#!/bin/bash
# Nothing is lost when things go wrong: the server going away or failing
# reads mid-backup, nbdvault killed with SIGKILL in the middle of a backup,
# and a repository whose file system fills up.  Each time the backup fails
# (exit 1, a clear error) or dies, the catalog lists no partial point,
# every earlier point restores bit-identically, the next backup succeeds and
# gc collects what the failed one left behind.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires nbdkit --filter=error --filter=delay memory 1M --version

M=1048576
repo=$testdir/repo
points () { "$NBDVAULT" list --repo "$repo" --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))'; }

# A good point to protect.
qemu-img create -q -f qcow2 disk.qcow2 $((32 * M))
qemu-io -f qcow2 -c "write -P 0x11 0 8M" -c "write -P 0x12 20M 2M" disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
serve_disk disk.qcow2
backup_json p1.json "$uri" --repo "$repo" --disk vm1 --bitmap b0
unserve
qemu-img convert -O raw disk.qcow2 ref-1.raw
p1=$(jget p1.json point)

# 1. The server fails reads (nbdkit's error filter): a clean failure.
head -c $((16 * M)) /dev/urandom > noise.raw
start_nbdkit err.sock --filter=error file noise.raw error-pread-rate=50% error-pread=EIO
expect_fail 1 "read from .*(Input/output error|EIO)" \
    "$NBDVAULT" backup "nbd+unix:///?socket=$testdir/err.sock" --repo "$repo" --disk noisy
[ "$(points)" = 1 ] || fail "a failed backup left a point in the catalog"

# 2. The server goes away mid-backup.
start_nbdkit slow.sock -t 1 --filter=delay file noise.raw rdelay=300ms
"$NBDVAULT" backup "nbd+unix:///?socket=$testdir/slow.sock" --repo "$repo" --disk noisy \
    --connections 1 > gone.out 2> gone.err &
bk=$!
sleep 1
_kill_pid "$nbdkit_pid"
rc=0; wait "$bk" || rc=$?
cat gone.err
[ "$rc" = 1 ] || fail "backup against a vanished server exited $rc, not 1"
grep -Eq "closed the connection|Connection reset|ESHUTDOWN|Broken pipe" gone.err || fail "unclear error: $(cat gone.err)"
[ "$(points)" = 1 ] || fail "a failed backup left a point in the catalog"

# 3. SIGKILL of nbdvault in the middle of a backup.
start_nbdkit slow2.sock -t 1 --filter=delay file noise.raw rdelay=200ms
"$NBDVAULT" backup "nbd+unix:///?socket=$testdir/slow2.sock" --repo "$repo" --disk noisy \
    --connections 1 > /dev/null 2>&1 &
bk=$!
sleep 1.5
kill -9 "$bk"
wait "$bk" 2>/dev/null || :
[ "$(points)" = 1 ] || fail "a killed backup left a point in the catalog"
run "$NBDVAULT" verify --repo "$repo" || fail "verify fails after a killed backup"
restore_and_compare "$repo" vm1 "$p1" ref-1.raw
# The next backup succeeds (breaking the dead holder's lock) and restores.
backup_json p2.json "nbd+unix:///?socket=$testdir/slow2.sock" --repo "$repo" --disk noisy --connections 4
run "$NBDVAULT" restore --repo "$repo" --disk noisy --output noisy.raw
cmp noisy.raw noise.raw || fail "backup after a killed one does not restore"
run "$NBDVAULT" gc --repo "$repo"
run "$NBDVAULT" verify --repo "$repo" || fail "verify fails after gc"
restore_and_compare "$repo" vm1 "$p1" ref-1.raw

# 4. The repository's file system fills up (a small tmpfs), when we may mount one.
mkdir small
if mount -t tmpfs -o size=6M tmpfs small 2>/dev/null; then
    cleanup_fn umount -l "$testdir/small"
    run "$NBDVAULT" init --repo small/repo
    serve_disk disk.qcow2
    backup_json s1.json "$uri" --repo small/repo --disk vm1 --bitmap b0 --compress-level 1 \
        || fail "first backup into the small repository failed"
    unserve
    start_nbdkit fill.sock file noise.raw
    expect_fail 1 "No space left on device|ENOSPC" \
        "$NBDVAULT" backup "nbd+unix:///?socket=$testdir/fill.sock" --repo small/repo --disk noisy
    n=$("$NBDVAULT" list --repo small/repo --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')
    [ "$n" = 1 ] || fail "a backup that ran out of space left a point"
    run "$NBDVAULT" gc --repo small/repo
    run "$NBDVAULT" restore --repo small/repo --disk vm1 --output "$testdir/s1.raw"
    cmp s1.raw ref-1.raw || fail "earlier point damaged by a full file system"
else
    echo "cannot mount a tmpfs here: the full file system case is not run"
fi
