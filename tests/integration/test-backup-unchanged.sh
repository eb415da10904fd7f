#!/bin/bash
# A bitmap that nobody clears (qemu-nbd -B night after night): each
# incremental reads every cell the bitmap ever marked, but records only the
# cells whose content differs from the parent's.  Checked in the catalog
# (rows per point), in --json (cells_unchanged), and by restoring every
# point bit-identically; a cell written back to its old content, a cell
# zeroed and a cell zeroed again are each handled.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires "$PYTHON" -c 'import nbd'
requires sqlite3 --version

K=65536
repo=$testdir/repo
qemu-img create -q -f qcow2 disk.qcow2 4M
qemu-img bitmap --add disk.qcow2 b0
start_qemu_nbd d.sock -t -f qcow2 -B b0 --shared=8 disk.qcow2
uri="nbd+unix:///?socket=$testdir/d.sock"

# step N PYTHON-WRITES: the writes (h is the handle), then a backup whose
# JSON is bN.json and whose reference image is ref-N.raw.
step ()
{
    local n=$1
    "$PYTHON" - "$uri" "$2" <<'PY' || fail "writes of step $n"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
exec(sys.argv[2])
h.flush()
PY
    backup_json b$n.json "$uri" --repo "$repo" --disk d --bitmap b0
    nbdcopy "$uri" ref-$n.raw || fail "copy of the disk at step $n"
}
rows () { sqlite3 "$repo/catalog.db" "SELECT coalesce(sum(count), 0) FROM cells WHERE point_id = $1"; }

step 1 "h.pwrite(b'\x11' * $K, 0); h.pwrite(b'\x12' * $K, 2 * $K)"
step 2 "h.pwrite(b'\x21' * $K, 5 * $K)"
p2=$(jget b2.json point)
# The bitmap still marks cells 0, 2 and 5; only cell 5 changed.
[ "$(jget b2.json bytes_read)" = $((3 * K)) ] || fail "the incremental did not read the 3 marked cells"
[ "$(rows "$p2")" = 1 ] || fail "point $p2 records $(rows "$p2") cells, not the 1 that changed"
[ "$(jget b2.json cells_unchanged)" = 2 ] || fail "cells_unchanged is not 2"
# Nothing written: nothing recorded.
step 3 "pass"
p3=$(jget b3.json point)
[ "$(rows "$p3")" = 0 ] || fail "a backup with no change records $(rows "$p3") cells"
# A cell written back to its parent's content, a cell zeroed, then zeroed again.
step 4 "h.pwrite(b'\x21' * $K, 5 * $K); h.zero($K, 2 * $K)"
p4=$(jget b4.json point)
[ "$(rows "$p4")" = 1 ] || fail "point $p4 records $(rows "$p4") cells, not the zeroed one"
step 5 "h.zero($K, 2 * $K)"
[ "$(rows "$(jget b5.json point)")" = 0 ] || fail "a cell zeroed twice was recorded again"
for n in 1 2 3 4 5; do
    p=$(jget b$n.json point)
    run "$NBDVAULT" restore --repo "$repo" --disk d --point $p --output r.raw || fail "restore $p"
    cmp r.raw ref-$n.raw || fail "point $p differs from the disk at step $n"
done
