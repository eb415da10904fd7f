#!/bin/bash
# A disk larger than one planning window (256 MiB) with writes across the
# window boundaries: the full backup and the incremental restore
# bit-identically, and read the same bytes whether the planner keeps the
# block status of its counting pass (the default) or asks again window by
# window (what a disk with too many extents to keep gets; forced here with
# NBDVAULT_PLAN_CACHE_EXTENTS).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires nbdinfo --version

M=1048576
W=$((256 * M))
size=$((2 * W + 5 * M + 4096))
qemu-img create -q -f qcow2 disk.qcow2 $size
# Data astride each boundary, a lone cluster in each window, the last bytes.
qemu-io -f qcow2 -c "write -P 0x11 $((W - 3 * M)) $((6 * M))" \
        -c "write -P 0x12 $((2 * W - 70000)) 140000" -c "write -P 0x14 $((100 * M)) 64k" \
        -c "write -P 0x15 $((W + 100 * M)) 64k" -c "write -P 0x16 $((size - 4096)) 4096" \
        disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
qemu-img convert -O raw disk.qcow2 ref-1.raw
qemu-io -f qcow2 -c "write -P 0x21 $((W - 512)) 1024" -c "write -P 0x22 $((2 * W + 12345)) 100" \
        -c "write -z $((W - 2 * M)) 64k" -c "discard $((2 * W - 65536)) 65536" \
        -c "write -P 0x23 $((2 * W + M)) 3M" disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 ref-2.raw

# The full point is of the disk as it was before the second writes.
qemu-img convert -f raw -O qcow2 ref-1.raw before.qcow2

for mode in kept asked; do
    repo=$testdir/repo-$mode
    if [ $mode = asked ]; then
        export NBDVAULT_PLAN_CACHE_EXTENTS=1
    else
        unset NBDVAULT_PLAN_CACHE_EXTENTS
    fi
    start_qemu_nbd b.sock -t -r -f qcow2 -x vm1 before.qcow2
    backup_json "full-$mode.json" "nbd+unix:///vm1?socket=$testdir/b.sock" --repo "$repo" --disk vm1
    _kill_pid "$qemu_nbd_pid"
    serve_disk disk.qcow2
    backup_json "incr-$mode.json" "$uri" --repo "$repo" --disk vm1 --bitmap b0
    [ "$(jget "incr-$mode.json" kind)" = incremental ] || fail "$mode: not an incremental"
    for p in full:1 incr:2; do
        point=$(jget "${p%:*}-$mode.json" point)
        run "$NBDVAULT" restore --repo "$repo" --disk vm1 --point "$point" --output r.raw ||
            fail "$mode: restore of point $point failed"
        cmp r.raw "ref-${p#*:}.raw" || fail "$mode: point $point restores different bytes"
        rm -f r.raw
    done
    unserve
done
unset NBDVAULT_PLAN_CACHE_EXTENTS
for k in bytes_planned bytes_read bytes_stored; do
    for p in full incr; do
        [ "$(jget "$p-kept.json" $k)" = "$(jget "$p-asked.json" $k)" ] ||
            fail "$p backup: $k differs when the planner asks again"
    done
done
[ "$(jget incr-kept.json bytes_read)" -gt 0 ] || fail "the incremental read nothing"
