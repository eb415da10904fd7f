#!/bin/bash
# Off-site replication with the same tool: a chain of four points in
# repository A is served, and repository B backs it up point by point, the
# first in full, each next one incrementally through the served
# qemu:dirty-bitmap:since-P of the previous point.  A full backup reads no
# more than the cells that hold data; each incremental reads no more than
# the cells that changed between the two points (and something when
# something changed); every point of B restores bit-identically.  The
# incrementals speak extended headers and use the block status payload
# filter (the server's debug log says so).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/serve-lib.sh"
requires qemu-nbd --version
requires nbdinfo --version

make_chain "$testdir/A" 4
# NBDVAULT_DEBUG: the server logs the first block status with a payload
# filter of each connection.
NBDVAULT_DEBUG=1 start_serve "$testdir/A"
B=$testdir/B

truncate -s "$chain_size" zero.raw
for k in 1 2 3 4; do
    u=$(serve_uri "vm1@${pt[k]}")
    if [ "$k" = 1 ]; then
        run "$NBDVAULT" backup "$u" --repo "$B" --disk vm1 --json > b-1.json || fail "full replication failed"
        cat b-1.json
        [ "$(jget b-1.json kind)" = full ] || fail "the first replicated point is not full"
        limit=$(check_serve diffbytes ref-1.raw zero.raw)
        what="the cells holding data"
    else
        run "$NBDVAULT" backup "$u" --bitmap "since-${pt[k - 1]}" --repo "$B" --disk vm1 \
            --connections 4 --json > "b-$k.json" || fail "incremental replication of point $k failed"
        cat "b-$k.json"
        [ "$(jget "b-$k.json" kind)" = incremental ] || fail "replicated point $k is not incremental"
        [ "$(jget "b-$k.json" parent)" = "$(jget "b-$((k - 1)).json" point)" ] ||
            fail "replicated point $k has the wrong parent"
        limit=$(check_serve diffbytes "ref-$k.raw" "ref-$((k - 1)).raw")
        what="the cells that changed since point $((k - 1))"
    fi
    read=$(jget "b-$k.json" bytes_read)
    echo "point $k: read $read bytes; $what: $limit bytes"
    [ "$read" -le "$limit" ] || fail "replicating point $k read $read bytes, more than $what ($limit)"
    if [ "$limit" -gt 0 ]; then
        [ "$read" -gt 0 ] || fail "replicating point $k read nothing though $limit bytes changed"
    fi
done

stop_serve
# The incrementals asked for the bitmap alone among their two contexts:
# extended headers and the block status payload filter.
grep -q 'block status with a payload filter (1 of 2 contexts)' serve.log ||
    { cat serve.log; fail "the incremental replication did not use the payload filter"; }

for k in 1 2 3 4; do
    p=$(jget "b-$k.json" point)
    run "$NBDVAULT" restore --repo "$B" --disk vm1 --point "$p" --output "r-$k.raw" ||
        fail "restore of replicated point $k failed"
    cmp "r-$k.raw" "ref-$k.raw" || fail "replicated point $k differs from the disk"
    rm -f "r-$k.raw"
done
run "$NBDVAULT" verify --repo "$B" || fail "verify finds damage in the replica"
