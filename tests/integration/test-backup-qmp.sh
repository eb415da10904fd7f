#!/bin/bash
# nbdvault backup --qmp: a running QEMU (TCG, two disks) backed up through
# its QMP socket: full, then incrementals with guest writes between; a
# write made while the backup reads is in the next point, not in this one;
# every point of every disk restores bit-identically (each disk alone, and
# the VM's disks together with restore --vm).  Then the failure cases, each
# followed by a backup proven correct: nbdvault killed mid-read (the next
# incremental still has everything, the leftovers are gone), a leftover
# blockdev-create job, the checkpoint
# removed by hand, the disk resized, QEMU killed mid-backup (clear error, no
# point), and QEMU killed and restarted (its persistent bitmap inconsistent:
# a full backup, the reason said).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/vm-lib.sh"
requires qemu-system-x86_64 --version

M=1048576
repo=$testdir/repo
work=$testdir/work
mkdir -p "$work"
qemu-img create -q -f qcow2 d0.qcow2 $((24 * M))
qemu-img create -q -f qcow2 d1.qcow2 $((8 * M + 65536 * 3))
qemu-io -f qcow2 -c "write -P 0x11 0 $((6 * M))" d0.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -P 0x12 $((1 * M)) 2M" d1.qcow2 >/dev/null
qemu-img convert -O raw d0.qcow2 ref-0.raw
qemu-img convert -O raw d1.qcow2 ref-1.raw
start_qmp_vm vm1 d0.qcow2 d1.qcow2

# backup_vm OUT [ARGS...]: backup --qmp into OUT (a JSON array), the
# reference of each disk kept as ref-N-P.raw for its new point P.
backup_vm ()
{
    local out=$1 i p
    shift
    run "$NBDVAULT" backup --qmp "$testdir/mon.sock" --repo "$repo" --work-dir "$work" \
        --json "$@" > "$out" || { cat "$out"; fail "backup --qmp $* failed"; }
    cat "$out"
    for i in 0 1; do
        p=$(jarr "$out" $i point)
        [ "$(jarr "$out" $i disk)" = "vm1/disk$i" ] || fail "result $i is not of vm1/disk$i"
        cp --sparse=always "ref-$i.raw" "ref-$i-$p.raw"
    done
}

# check_all: every point of both disks restores as its reference.
check_all ()
{
    local i p
    for i in 0 1; do
        for p in $(points_of "$repo" vm1/disk$i); do
            run "$NBDVAULT" restore --repo "$repo" --disk vm1/disk$i --point $p --output r.raw \
                || fail "restore of vm1/disk$i point $p failed"
            cmp r.raw "ref-$i-$p.raw" || fail "vm1/disk$i point $p differs from the disk at its time"
            rm -f r.raw
        done
    done
}

# no_leftovers: no job, export, fleecing node or job directory of ours, and
# exactly one checkpoint bitmap per disk.
no_leftovers ()
{
    qmp query-named-block-nodes > nodes.json
    "$PYTHON" - nodes.json <<'PY' || fail "leftovers in QEMU after a backup"
import json, sys
nodes = json.load(open(sys.argv[1]))
names = [n["node-name"] for n in nodes]
assert not [x for x in names if "nbdvault" in x], names
for n in nodes:
    if n["node-name"] in ("disk0", "disk1"):
        bms = [b["name"] for b in n.get("dirty-bitmaps", [])]
        assert len([b for b in bms if b.startswith("nbdvault-")]) == 1, (n["node-name"], bms)
        assert len(bms) == 1, (n["node-name"], bms)
PY
    [ "$(qmp query-block-jobs)" = "[]" ] || fail "a block job is left"
    [ "$(qmp query-block-exports)" = "[]" ] || fail "an export is left"
    ! compgen -G "$work/nbdvault-job-*" >/dev/null || fail "a job directory is left: $(ls $work)"
}

# 1: full.
backup_vm b1.json
for i in 0 1; do
    [ "$(jarr b1.json $i kind)" = full ] || fail "the first backup of disk $i is not full"
    [ "$(jarr b1.json $i full_reason)" = null ] || fail "a first backup needs no reason"
done
no_leftovers

# 2: guest writes, an incremental reading only them.
guest_write 0 "write -P 0x21 $((10 * M)) 64k"
guest_write 0 "write -P 0x22 100 1"
guest_write 1 "write -P 0x23 $((8 * M + 65536)) 4096"
backup_vm b2.json
for i in 0 1; do
    [ "$(jarr b2.json $i kind)" = incremental ] || fail "backup 2 of disk $i is not incremental"
done
[ "$(jarr b2.json 0 bytes_read)" -le $((2 * 65536)) ] || fail "incremental of disk0 read too much"
[ "$(jarr b2.json 1 bytes_read)" -le 65536 ] || fail "incremental of disk1 read too much"
no_leftovers

# 3: a write made while the backup reads belongs to the next point.
guest_write 0 "write -P 0x31 $((12 * M)) 4M"
"$NBDVAULT" backup --qmp "$testdir/mon.sock" --repo "$repo" --work-dir "$work" --json \
    --max-rate 1M > b3.json 2> b3.err &
bk=$!
wait_job_dir "$work"
cp --sparse=always ref-0.raw ref-0-at3.raw
guest_write 0 "write -P 0x32 $((20 * M)) 64k"
wait $bk || fail "backup 3 failed: $(cat b3.err)"
cat b3.json
p3=$(jarr b3.json 0 point)
mv ref-0-at3.raw ref-0-$p3.raw
cp --sparse=always ref-1.raw ref-1-$(jarr b3.json 1 point).raw
backup_vm b4.json
[ "$(jarr b4.json 0 kind)" = incremental ] || fail "backup 4 is not incremental"
[ "$(jarr b4.json 0 bytes_read)" -ge 65536 ] || fail "the write made during backup 3 was not read by 4"
check_all
no_leftovers

# The VM's disks of one run together.
run "$NBDVAULT" restore --repo "$repo" --vm vm1 --output-dir out --json > rv.json || fail "restore --vm"
cmp out/disk0.raw ref-0-$(jarr b4.json 0 point).raw || fail "restore --vm: disk0 differs"
cmp out/disk1.raw ref-1-$(jarr b4.json 1 point).raw || fail "restore --vm: disk1 differs"
run "$NBDVAULT" restore --repo "$repo" --vm vm1 --point "$(jarr b2.json 1 point)" \
    --output-dir out2 --format qcow2 || fail "restore --vm --format qcow2"
qemu-img compare -f raw -F qcow2 ref-0-$(jarr b2.json 0 point).raw out2/disk0.qcow2 \
    || fail "restore --vm --format qcow2: disk0 of run 2 differs"

# Failure: nbdvault killed mid-read.  The next backup is incremental from
# the old checkpoint and holds every write since it; the leftovers go.
guest_write 0 "write -P 0x41 $((4 * M)) 4M"
"$NBDVAULT" backup --qmp "$testdir/mon.sock" --repo "$repo" --work-dir "$work" \
    --max-rate 512K > /dev/null 2>&1 &
bk=$!
wait_job_dir "$work"
kill -9 $bk; wait $bk 2>/dev/null || :
guest_write 1 "write -P 0x42 0 64k"
backup_vm b5.json 2> b5.err
cat b5.err
for i in 0 1; do
    [ "$(jarr b5.json $i kind)" = incremental ] || fail "after a kill, disk $i's backup is not incremental"
done
grep -q "earlier run" b5.err || fail "the leftovers of the killed run were not reported"
no_leftovers
check_all

# Failure: a run killed while its fleecing overlay was being created
# leaves the blockdev-create job concluded and never dismissed (its id
# would refuse every later run's) and the overlay's file node.  The next
# run reaps the job, removes the node and is incremental; the dismissal's
# own event is not taken for its new create job's end.
: > left.qcow2
qmp blockdev-add "{\"driver\": \"file\", \"node-name\": \"nbdvault-fleece-file-disk0\",
    \"filename\": \"$testdir/left.qcow2\"}" >/dev/null || fail "blockdev-add of the leftover"
qmp blockdev-create '{"job-id": "nbdvault-create-disk0", "options": {"driver": "qcow2",
    "file": "nbdvault-fleece-file-disk0", "size": 1048576}}' >/dev/null || fail "blockdev-create"
for i in $(seq 100); do qmp query-jobs | grep -q concluded && break; sleep 0.1; done
qmp query-jobs | grep -q '"nbdvault-create-disk0"' || fail "no leftover job to reap"
guest_write 0 "write -P 0x43 $((5 * M)) 64k"
backup_vm b5c.json 2> b5c.err
cat b5c.err
grep -q "dismissed job nbdvault-create-disk0" b5c.err || fail "the leftover job was not reported"
for i in 0 1; do
    [ "$(jarr b5c.json $i kind)" = incremental ] || fail "after a leftover create job, disk $i is not incremental"
done
[ "$(qmp query-jobs)" = "[]" ] || fail "a job is left: $(qmp query-jobs)"
no_leftovers
check_all

# Failure: the checkpoint removed by hand: a full backup saying why.
ck=$("$NBDVAULT" list --repo "$repo" --disk vm1/disk1 --json |
     "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[-1]["checkpoint"])')
qmp block-dirty-bitmap-remove "{\"node\": \"disk1\", \"name\": \"$ck\"}" >/dev/null \
    || fail "cannot remove bitmap $ck"
guest_write 1 "write -P 0x51 $((2 * M)) 64k"
backup_vm b6.json
[ "$(jarr b6.json 0 kind)" = incremental ] || fail "disk0 lost its incremental"
[ "$(jarr b6.json 1 kind)" = full ] || fail "a removed checkpoint did not give a full backup"
jarr b6.json 1 full_reason | grep -q "$ck" || fail "the reason does not name the checkpoint"
"$NBDVAULT" list --repo "$repo" --disk vm1/disk1 | tail -n 1 | grep -q "$ck" \
    || fail "list does not show why the point is full"

# Failure: the disk resized.
qmp block_resize "{\"node-name\": \"disk1\", \"size\": $((12 * M))}" >/dev/null || fail "block_resize"
truncate -s $((12 * M)) ref-1.raw
backup_vm b7.json
[ "$(jarr b7.json 1 kind)" = full ] || fail "a resized disk did not give a full backup"
jarr b7.json 1 full_reason | grep -q "resized" || fail "the reason does not say resized"
[ "$(jarr b7.json 1 disk_size)" = $((12 * M)) ] || fail "the new size was not recorded"
check_all
no_leftovers

# Failure: QEMU killed mid-backup: a clear error, no new point.
before0=$(points_of "$repo" vm1/disk0)
guest_write 0 "write -P 0x61 $((8 * M)) 4M"
# Flushed, so that the image holds the write (its qcow2 metadata) when
# QEMU is killed.
for i in 0 1; do
    qmp hmp "qemu-io -d /machine/peripheral/vblk$i/virtio-backend flush" >/dev/null || fail "flush"
done
"$NBDVAULT" backup --qmp "$testdir/mon.sock" --repo "$repo" --work-dir "$work" \
    --max-rate 512K > kill.out 2> kill.err &
bk=$!
wait_job_dir "$work"
kill -9 "$vm_pid"
rc=0; wait $bk || rc=$?
cat kill.err
[ "$rc" = 1 ] || fail "a backup whose QEMU died exited $rc"
grep -Eq "vm1/disk0|QEMU|closed|connection" kill.err || fail "no clear error when QEMU died"
[ "$(points_of "$repo" vm1/disk0)" = "$before0" ] || fail "a point was recorded though QEMU died"

# Restarted after the kill: the persistent bitmap was not written back, so
# QEMU calls it inconsistent (or it is gone): a full backup, the reason said.
rm -rf "$work"/nbdvault-job-*
start_qmp_vm vm1 d0.qcow2 d1.qcow2
backup_vm b8.json
for i in 0 1; do
    [ "$(jarr b8.json $i kind)" = full ] || fail "after QEMU was killed disk $i was not backed up full"
    [ "$(jarr b8.json $i full_reason)" != null ] || fail "no reason for the full backup of disk $i"
done
# A clean restart keeps the bitmap: incremental again.
stop_qmp_vm
start_qmp_vm vm1 d0.qcow2 d1.qcow2
guest_write 1 "write -P 0x71 $((3 * M)) 64k"
backup_vm b9.json
[ "$(jarr b9.json 1 kind)" = incremental ] || fail "after a clean restart disk1 is not incremental"
check_all
run "$NBDVAULT" verify --repo "$repo" || fail "verify found damage"
