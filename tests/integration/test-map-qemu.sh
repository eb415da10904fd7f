#!/bin/bash
# nbdvault map against qemu-nbd: a qcow2 with a backing file and two
# persistent dirty bitmaps (64 KiB and 4 KiB granularity).  For
# base:allocation, qemu:allocation-depth and both bitmaps, the text,
# --totals and --json outputs equal nbdinfo --map's; and the bitmaps hold
# what the writes after `qemu-img bitmap --add` should have made dirty.
. "$(dirname "$0")/lib.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version

# The base holds data at 0-8M and 900M-901M; the top inherits it.
qemu-img create -q -f qcow2 base.qcow2 1G
qemu-io -f qcow2 -c 'write -P 0x11 0 8M' -c 'write -P 0x44 900M 1M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-img bitmap --add top.qcow2 b0
qemu-img bitmap --add -g 4096 top.qcow2 b4k
# After the bitmaps: a 1-byte write, 2 bytes across a 64K boundary, zeroes,
# a discard over inherited data, a discard over nothing, a plain write.
qemu-io -f qcow2 \
    -c 'write -P 0x22 12345 1' \
    -c 'write -P 0x23 65535 2' \
    -c 'write -z 700M 64k' \
    -c 'discard 4M 2M' \
    -c 'discard 10M 2M' \
    -c 'write -P 0x33 20M 1M' \
    top.qcow2 >/dev/null

start_qemu_nbd sock -t -r -f qcow2 -B b0 -B b4k -A --shared=4 top.qcow2
uri="nbd+unix:///?socket=$testdir/sock"

for ctx in base:allocation qemu:allocation-depth qemu:dirty-bitmap:b0 qemu:dirty-bitmap:b4k; do
    f=${ctx//:/_}
    nbdinfo --map="$ctx" "$uri" > "$f.nbdinfo"
    run $NBDVAULT map --context "$ctx" "$uri" > "$f.nbdvault"
    diff -u "$f.nbdinfo" "$f.nbdvault" || fail "map of $ctx differs from nbdinfo --map"

    nbdinfo --map="$ctx" --totals "$uri" > "$f.totals.nbdinfo"
    run $NBDVAULT map --context "$ctx" --totals "$uri" > "$f.totals.nbdvault"
    diff -u "$f.totals.nbdinfo" "$f.totals.nbdvault" || fail "--totals of $ctx differs"

    nbdinfo --map="$ctx" --json "$uri" > "$f.json.nbdinfo"
    run $NBDVAULT map --context "$ctx" --json "$uri" > "$f.json.nbdvault"
    json_equal "$f.json.nbdinfo" "$f.json.nbdvault" || fail "--json of $ctx differs"

    nbdinfo --map="$ctx" --totals --json "$uri" > "$f.tj.nbdinfo"
    run $NBDVAULT map --context "$ctx" --totals --json "$uri" > "$f.tj.nbdvault"
    json_equal "$f.tj.nbdinfo" "$f.tj.nbdvault" || fail "--totals --json of $ctx differs"
    echo "== $ctx"; cat "$f.nbdvault"
done

# base:allocation is the default context.
run $NBDVAULT map "$uri" > default.nbdvault
cmp base_allocation.nbdvault default.nbdvault || fail "map without --context is not base:allocation"

# What the writes must have produced, independently of nbdinfo.
has () { grep -Eq "^ *$2 +$3 +$4 " "$1" || fail "$1: no extent '$2 $3 $4' in: $(cat "$1")"; }
# 64K granularity: the first two 64K blocks (bytes 12345 and 65535-65536).
has qemu_dirty-bitmap_b0.nbdvault 0 131072 1
has qemu_dirty-bitmap_b0.nbdvault $((700 << 20)) 65536 1
# 4K granularity: only the touched 4K blocks.
has qemu_dirty-bitmap_b4k.nbdvault 0 12288 0
has qemu_dirty-bitmap_b4k.nbdvault 12288 4096 1
has qemu_dirty-bitmap_b4k.nbdvault 61440 8192 1
# The discarded range over inherited data is local zeroes; beyond 8M the
# base's data at 900M shows through.
has base_allocation.nbdvault $((4 << 20)) $((2 << 20)) 3
has qemu_allocation-depth.nbdvault $((4 << 20)) $((2 << 20)) 1
has qemu_allocation-depth.nbdvault $((900 << 20)) $((1 << 20)) 2
grep -q 'backing depth 2' qemu_allocation-depth.nbdvault || fail "no backing depth 2"
# The two bitmaps must not look alike.
if cmp -s qemu_dirty-bitmap_b0.nbdvault qemu_dirty-bitmap_b4k.nbdvault; then
    fail "bitmaps of 64K and 4K granularity gave the same map"
fi

# A context the export does not offer.
expect_fail 1 'qemu:dirty-bitmap:nosuch' $NBDVAULT map --context qemu:dirty-bitmap:nosuch "$uri"
