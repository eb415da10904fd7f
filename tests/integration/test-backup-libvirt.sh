#!/bin/bash
# requires: libvirtd
# nbdvault backup --libvirt: a running transient TCG domain with two qcow2
# disks backed up through the libvirt API: full, then incrementals with
# guest writes between; a write made while the backup reads is in the next
# point, not in this one; every point of every disk restores bit-identically
# (alone, and the domain's disks together with restore --libvirt).  Then the
# failure cases, each followed by a backup proven correct: nbdvault killed
# mid-read (the next incremental still has everything; the job, the stray
# checkpoint and the job directory are gone), the checkpoint deleted by
# hand, the disk resized, QEMU killed mid-backup (clear error, no point),
# and the domain recreated (its checkpoints gone: a full backup, the reason
# said).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/vm-lib.sh"
requires virsh --version

M=1048576
dom=nbdvault-it-$$
repo=$testdir/repo
work=$testdir/work
mkdir -m 0711 -p "$work"
qemu-img create -q -f qcow2 d0.qcow2 $((24 * M))
qemu-img create -q -f qcow2 d1.qcow2 $((8 * M + 65536 * 3))
qemu-io -f qcow2 -c "write -P 0x11 0 $((6 * M))" d0.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -P 0x12 $((1 * M)) 2M" d1.qcow2 >/dev/null
qemu-img convert -O raw d0.qcow2 ref-0.raw
qemu-img convert -O raw d1.qcow2 ref-1.raw
start_libvirt_vm "$dom" d0.qcow2 d1.qcow2
tgt=(vda vdb)

backup_lv ()
{
    local out=$1 i p
    shift
    run "$NBDVAULT" backup --libvirt "$dom" --repo "$repo" --work-dir "$work" \
        --json "$@" > "$out" || { cat "$out"; fail "backup --libvirt $* failed"; }
    cat "$out"
    for i in 0 1; do
        p=$(jarr "$out" $i point)
        [ "$(jarr "$out" $i disk)" = "$dom/${tgt[$i]}" ] || fail "result $i is not of $dom/${tgt[$i]}"
        cp --sparse=always "ref-$i.raw" "ref-$i-$p.raw"
    done
}

check_all ()
{
    local i p
    for i in 0 1; do
        for p in $(points_of "$repo" "$dom/${tgt[$i]}"); do
            run "$NBDVAULT" restore --repo "$repo" --disk "$dom/${tgt[$i]}" --point $p \
                --output r.raw || fail "restore of $dom/${tgt[$i]} point $p failed"
            cmp r.raw "ref-$i-$p.raw" || fail "$dom/${tgt[$i]} point $p differs from the disk at its time"
            rm -f r.raw
        done
    done
}

no_leftovers ()
{
    local cks
    cks=$(virsh -q checkpoint-list "$dom" --name)
    echo "checkpoints: $cks"
    [ "$(echo "$cks" | grep -c '^nbdvault-')" = 1 ] || fail "not exactly one checkpoint left: $cks"
    # libvirt may still be tidying the ended job for a moment (a full run
    # of the suite saw a domjobinfo other than None once, None right after).
    local info i
    for i in $(seq 50); do
        info=$(virsh domjobinfo "$dom")
        echo "$info" | grep -q "Job type: *None" && break
        [ "$i" = 1 ] && echo "domjobinfo right after the backup: $info"
        sleep 0.1
    done
    echo "$info" | grep -q "Job type: *None" || fail "a job is left: $info"
    ! compgen -G "$work/nbdvault-job-*" >/dev/null || fail "a job directory is left: $(ls $work)"
}

# 1: full.
backup_lv b1.json
for i in 0 1; do
    [ "$(jarr b1.json $i kind)" = full ] || fail "the first backup of disk $i is not full"
done
no_leftovers

# 2: guest writes; an incremental reads only them.
lv_write "$dom" 0 "write -P 0x21 $((10 * M)) 64k"
lv_write "$dom" 1 "write -P 0x23 $((8 * M + 65536)) 4096"
backup_lv b2.json
for i in 0 1; do
    [ "$(jarr b2.json $i kind)" = incremental ] || fail "backup 2 of disk $i is not incremental"
    [ "$(jarr b2.json $i bytes_read)" -le 65536 ] || fail "incremental of disk $i read too much"
done
no_leftovers

# 3: a write made while the backup reads belongs to the next point.
lv_write "$dom" 0 "write -P 0x31 $((12 * M)) 4M"
"$NBDVAULT" backup --libvirt "$dom" --repo "$repo" --work-dir "$work" --json \
    --max-rate 1M > b3.json 2> b3.err &
bk=$!
wait_job_dir "$work"
cp --sparse=always ref-0.raw ref-0-at3.raw
lv_write "$dom" 0 "write -P 0x32 $((20 * M)) 64k"
wait $bk || fail "backup 3 failed: $(cat b3.err)"
cat b3.json
mv ref-0-at3.raw "ref-0-$(jarr b3.json 0 point).raw"
cp --sparse=always ref-1.raw "ref-1-$(jarr b3.json 1 point).raw"
backup_lv b4.json
[ "$(jarr b4.json 0 bytes_read)" -ge 65536 ] || fail "the write made during backup 3 was not read by 4"
check_all
no_leftovers

run "$NBDVAULT" restore --repo "$repo" --libvirt "$dom" --output-dir out || fail "restore --libvirt"
cmp out/vda.raw "ref-0-$(jarr b4.json 0 point).raw" || fail "restore --libvirt: vda differs"
cmp out/vdb.raw "ref-1-$(jarr b4.json 1 point).raw" || fail "restore --libvirt: vdb differs"

# Failure: nbdvault killed mid-read.
lv_write "$dom" 0 "write -P 0x41 $((4 * M)) 4M"
"$NBDVAULT" backup --libvirt "$dom" --repo "$repo" --work-dir "$work" \
    --max-rate 512K > /dev/null 2>&1 &
bk=$!
wait_job_dir "$work"
kill -9 $bk; wait $bk 2>/dev/null || :
lv_write "$dom" 1 "write -P 0x42 0 64k"
backup_lv b5.json 2> b5.err
cat b5.err
for i in 0 1; do
    [ "$(jarr b5.json $i kind)" = incremental ] || fail "after a kill, disk $i's backup is not incremental"
done
no_leftovers
check_all

# Failure: the checkpoint deleted by hand.
ck=$(virsh -q checkpoint-list "$dom" --name | grep '^nbdvault-')
run virsh -q checkpoint-delete "$dom" "$ck" || fail "checkpoint-delete"
lv_write "$dom" 1 "write -P 0x51 $((2 * M)) 64k"
backup_lv b6.json
for i in 0 1; do
    [ "$(jarr b6.json $i kind)" = full ] || fail "a deleted checkpoint did not give a full backup"
    jarr b6.json $i full_reason | grep -q "$ck" || fail "the reason does not name checkpoint $ck"
done

# Failure: the disk resized.
run virsh -q blockresize "$dom" vdb $((12 * M))B || fail "blockresize"
truncate -s $((12 * M)) ref-1.raw
backup_lv b7.json
[ "$(jarr b7.json 0 kind)" = incremental ] || fail "vda lost its incremental"
[ "$(jarr b7.json 1 kind)" = full ] || fail "a resized disk did not give a full backup"
jarr b7.json 1 full_reason | grep -q "resized" || fail "the reason does not say resized"
check_all
no_leftovers

# Failure: QEMU killed mid-backup: a clear error, no new point.
before=$(points_of "$repo" "$dom/vda")
lv_write "$dom" 0 "write -P 0x61 $((8 * M)) 4M"
for i in 0 1; do
    virsh -q qemu-monitor-command "$dom" --hmp \
        "qemu-io -d /machine/peripheral/virtio-disk$i/virtio-backend flush" >/dev/null
done
"$NBDVAULT" backup --libvirt "$dom" --repo "$repo" --work-dir "$work" \
    --max-rate 512K > kill.out 2> kill.err &
bk=$!
wait_job_dir "$work"
pkill -9 -f "guest=$dom," || fail "no QEMU process of $dom"
rc=0; wait $bk || rc=$?
cat kill.err
[ "$rc" = 1 ] || fail "a backup whose QEMU died exited $rc"
[ "$(points_of "$repo" "$dom/vda")" = "$before" ] || fail "a point was recorded though QEMU died"

# The domain recreated: its checkpoints are gone: full, the reason said.
rm -rf "$work"/nbdvault-job-*
virsh -q destroy "$dom" >/dev/null 2>&1 || :
start_libvirt_vm "$dom" d0.qcow2 d1.qcow2
backup_lv b8.json
for i in 0 1; do
    [ "$(jarr b8.json $i kind)" = full ] || fail "a recreated domain's disk $i was not backed up full"
    [ "$(jarr b8.json $i full_reason)" != null ] || fail "no reason for the full backup of disk $i"
done
lv_write "$dom" 1 "write -P 0x71 $((3 * M)) 64k"
backup_lv b9.json
[ "$(jarr b9.json 1 kind)" = incremental ] || fail "after the full one, vdb is not incremental"
check_all
run "$NBDVAULT" verify --repo "$repo" || fail "verify found damage"
