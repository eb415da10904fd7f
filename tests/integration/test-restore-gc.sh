#!/bin/bash
# restore against gc: a restore holds a lock that only gc conflicts with.
# A gc started while a restore reads is refused (naming the restore) and
# takes nothing from it: the restore writes the right bytes; a restore
# started while a gc holds the repository waits for it instead of failing.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires nbdkit --version
requires sqlite3 --version

M=1048576
repo=$testdir/repo
qemu-img create -q -f qcow2 disk.qcow2 $((16 * M))
head -c $((4 * M)) /dev/urandom > rand.bin
qemu-io -f qcow2 -c "write -s rand.bin 0 $((4 * M))" disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
serve_disk disk.qcow2
backup_json b1.json "$uri" --repo "$repo" --disk d --bitmap b0
unserve
qemu-img convert -O raw disk.qcow2 ref.raw

# A slow NBD target (every write delayed): the restore takes seconds.
start_nbdkit t.sock --filter=delay memory $((16 * M)) wdelay=2
"$NBDVAULT" restore --repo "$repo" --disk d --to "nbd+unix:///?socket=$testdir/t.sock" \
    > restore.out 2>&1 &
rpid=$!
sleep 1
expect_fail 1 'gc.*a restore' "$NBDVAULT" gc --repo "$repo"
wait $rpid || fail "the restore failed: $(cat restore.out)"
run nbdcopy "nbd+unix:///?socket=$testdir/t.sock" out.raw || fail "nbdcopy of the target"
cmp out.raw ref.raw || fail "the restore wrote other bytes"
run "$NBDVAULT" gc --repo "$repo" || fail "gc after the restore"

# A gc holding the repository (its lock row, held by a live process for
# 2 s): the restore waits, says so, then restores.
sleep 2 &
holder=$!
sqlite3 "$repo/catalog.db" "INSERT INTO locks(name, pid, host, since) VALUES ('gc', $holder, '$(hostname)', strftime('%s','now'))"
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw 2> wait.err || fail "the restore failed: $(cat wait.err)"
cat wait.err
grep -q "waiting for the repository" wait.err || fail "the restore did not say it waited"
cmp r.raw ref.raw || fail "the restore after waiting wrote other bytes"
