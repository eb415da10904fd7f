#!/bin/bash
# A chain of restore points of a live qcow2 export with a persistent dirty
# bitmap: a full backup, then incrementals after unaligned writes,
# write-zeroes, discards and a write to the last, partial cell of a disk
# whose size is not a multiple of the chunk size.  Every point restores
# bit-identically to a file and to an NBD export; an incremental reads no
# more than the bitmap marks dirty, and verify finds nothing wrong.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires nbdinfo --version

M=1048576
size=$((48 * M + 12800))            # not a multiple of 64 KiB
repo=$testdir/repo
qemu-img create -q -f qcow2 disk.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 $((8 * M))" -c "write -P 0x12 $((20 * M)) 3M" \
        -c "write -P 0x13 $((size - 4096)) 4096" disk.qcow2 >/dev/null
# Cells of zeroes but for a byte or eight, late in a 4 KiB block: not zero.
qemu-io -f qcow2 -c "write -P 0x41 $((14 * M + 65535)) 1" \
        -c "write -P 0x42 $((15 * M + 4096 + 16)) 8" disk.qcow2 >/dev/null
head -c $((2 * M)) /dev/urandom > rand.bin
qemu-io -f qcow2 -c "write -P 0x14 $((30 * M)) 2M" disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0

# Point 1: full.
serve_disk disk.qcow2
backup_json p1.json "$uri" --repo "$repo" --disk vm1 --bitmap b0
[ "$(jget p1.json kind)" = full ] || fail "first backup is not full"
[ "$(jget p1.json parent)" = null ] || fail "a full backup has a parent"
# A full backup reads what base:allocation reports as data, no more.
data=$(nbdinfo --map "$uri" | awk '$3 == 0 || $3 == 1 { s += $2 } END { print s + 0 }')
[ "$(jget p1.json bytes_read)" -le "$data" ] || fail "full backup read more than the data"
unserve
qemu-img convert -O raw disk.qcow2 ref-1.raw
qemu-img bitmap --clear disk.qcow2 b0

# Point 2: unaligned writes, write-zeroes, discard, the last partial cell.
qemu-io -f qcow2 -c "write -P 0x21 12345 100" -c "write -P 0x22 $((5 * M + 4000)) 70000" \
        -c "write -z $((20 * M)) 1M" -c "discard $((30 * M)) 512k" \
        -c "write -P 0x23 $((size - 100)) 100" disk.qcow2 >/dev/null
serve_disk disk.qcow2
dirty=$(dirty_bytes "$uri" b0)
backup_json p2.json "$uri" --repo "$repo" --disk vm1 --bitmap b0
[ "$(jget p2.json kind)" = incremental ] || fail "second backup is not incremental"
[ "$(jget p2.json parent)" = "$(jget p1.json point)" ] || fail "wrong parent"
read2=$(jget p2.json bytes_read)
[ "$read2" -le "$dirty" ] || fail "incremental read $read2 bytes, more than the $dirty dirty bytes"
[ "$read2" -gt 0 ] || fail "incremental read nothing"
unserve
qemu-img convert -O raw disk.qcow2 ref-2.raw
qemu-img bitmap --clear disk.qcow2 b0

# Point 3: random data over old data, and a write of zeroes with data.
qemu-io -f qcow2 -c "write -P 0x31 $((7 * M + 512)) 1536" -c "write -z $((40 * M)) 64k" \
        -c "write -P 0x32 $((47 * M)) 1M" disk.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -s rand.bin $((10 * M)) 2M" disk.qcow2 >/dev/null 2>&1 ||
    qemu-io -f qcow2 -c "write -P 0x33 $((10 * M)) 2M" disk.qcow2 >/dev/null
serve_disk disk.qcow2
dirty=$(dirty_bytes "$uri" b0)
backup_json p3.json "$uri" --repo "$repo" --disk vm1 --bitmap b0
[ "$(jget p3.json bytes_read)" -le "$dirty" ] || fail "incremental 3 read more than dirty"
# Point 4: the same bitmap again, nothing new on the disk: every chunk it
# reads is already in the repository, so it stores nothing.
backup_json p4.json "$uri" --repo "$repo" --disk vm1 --bitmap b0 --connections 1
[ "$(jget p4.json chunks_new)" = 0 ] || fail "point 4 stored new chunks for unchanged data"
[ "$(jget p4.json bytes_stored)" = 0 ] || fail "point 4 stored bytes for unchanged data"
unserve
qemu-img convert -O raw disk.qcow2 ref-3.raw
cp ref-3.raw ref-4.raw

run "$NBDVAULT" list --repo "$repo"
n=$("$NBDVAULT" list --repo "$repo" --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')
[ "$n" = 4 ] || fail "list shows $n points, not 4"

for i in 1 2 3 4; do
    restore_and_compare "$repo" vm1 "$(jget p$i.json point)" ref-$i.raw
done
# The newest point by default.
run "$NBDVAULT" restore --repo "$repo" --disk vm1 --output newest.raw
cmp newest.raw ref-4.raw || fail "default restore is not the newest point"

run "$NBDVAULT" verify --repo "$repo" || fail "verify reports damage on a sound repository"
