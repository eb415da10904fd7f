# backup-lib.sh: helpers for the backup/restore tests, sourced after lib.sh.
#
# The disk is a qcow2 image with a persistent dirty bitmap "b0"; between
# backups it is changed with qemu-io while no server holds it, and its state
# at each point is kept as a raw file (ref-N.raw) to compare restores with.

# serve_disk IMAGE [ARGS...]: qemu-nbd read-only on $testdir/d.sock with the
# bitmap b0 and multi-conn; sets $uri.
serve_disk ()
{
    local img=$1
    shift
    start_qemu_nbd d.sock -t -r -f qcow2 -x vm1 -B b0 --shared=8 "$@" "$img"
    uri="nbd+unix:///vm1?socket=$testdir/d.sock"
}

# unserve: stops the qemu-nbd started by serve_disk.
unserve ()
{
    _kill_pid "$qemu_nbd_pid"
}

# backup_json OUT ARGS...: nbdvault backup ... --json into OUT, failing the
# test when the backup fails.
backup_json ()
{
    local out=$1
    shift
    run "$NBDVAULT" backup "$@" --json > "$out" || fail "backup $* failed"
    cat "$out"
}

# jget FILE KEY: one value of a JSON object.
jget ()
{
    "$PYTHON" -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print("null" if v is None else v)' "$1" "$2"
}

# dirty_bytes URI BITMAP: the bytes the bitmap marks dirty.
dirty_bytes ()
{
    nbdinfo --map="qemu:dirty-bitmap:$2" "$1" | awk '$3 == 1 { s += $2 } END { print s + 0 }'
}

# restore_and_compare REPO DISK POINT REF: restores the point to a file
# (cmp with REF) and to a writable qemu-nbd export (qemu-img compare).
restore_and_compare ()
{
    local repo=$1 disk=$2 point=$3 ref=$4 size
    run "$NBDVAULT" restore --repo "$repo" --disk "$disk" --point "$point" --output "r-$point.raw" \
        || fail "restore of point $point to a file failed"
    cmp "r-$point.raw" "$ref" || fail "point $point restored to a file differs from the disk"
    size=$(stat -c %s "$ref")
    [ "$(stat -c %s "r-$point.raw")" = "$size" ] || fail "restored file has the wrong size"
    rm -f "r-$point.raw"
    # To an NBD export: a qcow2 target with stale content everywhere, so
    # that zero cells must really be written as zeroes.
    qemu-img create -q -f qcow2 "t-$point.qcow2" "$size"
    qemu-io -f qcow2 -c "write -P 0xee 0 $size" "t-$point.qcow2" >/dev/null
    local pid_before=$qemu_nbd_pid
    start_qemu_nbd "t$point.sock" -t -f qcow2 --shared=4 "t-$point.qcow2"
    local tpid=$qemu_nbd_pid
    qemu_nbd_pid=$pid_before
    run "$NBDVAULT" restore --repo "$repo" --disk "$disk" --point "$point" \
        --to "nbd+unix:///?socket=$testdir/t$point.sock" --connections 4 \
        || fail "restore of point $point to an NBD export failed"
    _kill_pid "$tpid"
    run qemu-img compare -f raw -F qcow2 "$ref" "t-$point.qcow2" \
        || fail "point $point restored to an NBD export differs from the disk"
    rm -f "t-$point.qcow2"
}
