#!/bin/bash
# prune keeps the points its rules keep and every one of them stays whole
# (what a removed point held is merged into the next); gc then gives the
# space back and removes nothing still in use.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version

M=1048576
repo=$testdir/repo
qemu-img create -q -f qcow2 disk.qcow2 $((24 * M))
qemu-io -f qcow2 -c "write -P 0x10 0 6M" disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
for i in 1 2 3 4 5; do
    serve_disk disk.qcow2
    backup_json p$i.json "$uri" --repo "$repo" --disk vm1 --bitmap b0
    unserve
    qemu-img convert -O raw disk.qcow2 ref-$i.raw
    qemu-img bitmap --clear disk.qcow2 b0
    # Each round overwrites the same 1 MiB with new random data (what
    # prune turns into garbage), and changes a few other places.
    head -c $M /dev/urandom > rand.bin
    qemu-io -f qcow2 -c "write -s rand.bin $((16 * M)) 1M" -c "write -P 0x2$i $((i * M)) 1M" \
            -c "write -P 0x3$i $((10 * M + i * 100000)) 300000" \
            -c "write -z $((i * 2 * M + 65536)) 64k" disk.qcow2 >/dev/null
done
before=$(du -sb "$repo" | cut -f1)

# Dry run changes nothing.
run "$NBDVAULT" prune --repo "$repo" --disk vm1 --keep-last 2 --dry-run
[ "$("$NBDVAULT" list --repo "$repo" --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 5 ] \
    || fail "a dry run removed points"
expect_fail 2 "keep" "$NBDVAULT" prune --repo "$repo" --disk vm1

# Keep the newest two, and the first (removing 2 and 3 merges them into 4).
run "$NBDVAULT" prune --repo "$repo" --disk vm1 --keep-last 2 --json > prune.json
kept=$("$NBDVAULT" list --repo "$repo" --json | "$PYTHON" -c 'import json,sys; print(" ".join(str(p["point"]) for p in json.load(sys.stdin)))')
[ "$kept" = "$(jget p4.json point) $(jget p5.json point)" ] || fail "prune kept '$kept'"
restore_and_compare "$repo" vm1 "$(jget p4.json point)" ref-4.raw
restore_and_compare "$repo" vm1 "$(jget p5.json point)" ref-5.raw

run "$NBDVAULT" gc --repo "$repo" --json > gc.json
cat gc.json
after=$(du -sb "$repo" | cut -f1)
echo "repository: $before bytes before, $after after prune + gc"

[ "$(jget gc.json chunks_removed)" -gt 0 ] || fail "gc removed no chunk"
[ "$(jget gc.json bytes_freed)" -ge $M ] || fail "gc freed less than the 1 MiB of garbage"
[ $(( $(jget gc.json packs_removed) + $(jget gc.json packs_rewritten) )) -gt 0 ] ||
    fail "gc neither removed nor rewrote a pack"
[ "$after" -lt $((before - M)) ] || fail "the repository did not shrink"
run "$NBDVAULT" verify --repo "$repo" || fail "verify fails after gc"
restore_and_compare "$repo" vm1 "$(jget p4.json point)" ref-4.raw
restore_and_compare "$repo" vm1 "$(jget p5.json point)" ref-5.raw
# A second gc finds nothing more to do.
run "$NBDVAULT" gc --repo "$repo" --json > gc2.json
[ "$(jget gc2.json chunks_removed)" = 0 ] || fail "second gc removed chunks"
[ "$(jget gc2.json packs_rewritten)" = 0 ] || fail "second gc rewrote packs again"
