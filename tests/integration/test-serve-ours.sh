#!/bin/bash
# nbdvault's own client against `nbdvault serve`: the two speak extended
# headers, which no reference peer does.  For each point of a chain:
# `nbdvault info --json` reports structured replies and extended headers;
# `nbdvault map` of every context equals nbdinfo --map (libnbd, compact
# headers); nbdcore-tool's multi-conn download equals the disk; and the
# block status payload filter (asked by tests/tools/hostile-client with
# every context of the export negotiated, the filter naming one) answers
# for that context only, with the same extents.  A fragmented disk (more
# extents than one reply carries) and a sparse disk over 4 GiB check that
# long maps are split and resumed correctly in both header modes.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/serve-lib.sh"
requires qemu-nbd --version
requires nbdinfo --version
[ -x "${HOSTILE_CLIENT:-}" ] || skip "HOSTILE_CLIENT is not set (run through make integration-check)"

repo=$testdir/repo
make_chain "$repo" 3

# A fragmented disk: every other cell written, then every third cell
# rewritten, so that maps and bitmaps have hundreds of extents.
fsize=$((24 * M + 4096))
qemu-img create -q -f qcow2 frag.qcow2 $fsize
args=()
for i in $(seq 0 2 383); do
    args+=(-c "write -P $((i % 200 + 1)) $((i * CELL)) 4096")
done
qemu-io -f qcow2 "${args[@]}" frag.qcow2 >/dev/null
start_qemu_nbd f.sock -t -r -f qcow2 -x frag frag.qcow2
run "$NBDVAULT" backup "nbd+unix:///frag?socket=$testdir/f.sock" --repo "$repo" --disk frag --json > f1.json
_kill_pid "$qemu_nbd_pid"
qemu-img convert -O raw frag.qcow2 frag-1.raw
qemu-img bitmap --add frag.qcow2 b0
args=()
for i in $(seq 1 3 383); do
    args+=(-c "write -P 0xee $((i * CELL + 100)) 100")
done
qemu-io -f qcow2 "${args[@]}" frag.qcow2 >/dev/null
start_qemu_nbd f.sock -t -r -f qcow2 -x frag -B b0 frag.qcow2
run "$NBDVAULT" backup "nbd+unix:///frag?socket=$testdir/f.sock" --repo "$repo" --disk frag \
    --bitmap b0 --json > f2.json
_kill_pid "$qemu_nbd_pid"
qemu-img convert -O raw frag.qcow2 frag-2.raw
f1=$(jget f1.json point)
f2=$(jget f2.json point)

# A sparse disk of 9 GiB: data at the start, around 4 GiB and at the end (a
# hole over 4 GiB long).
bsize=$((9 * 1024 * M + 512))
qemu-img create -q -f qcow2 big.qcow2 $bsize
qemu-io -f qcow2 -c "write -P 0x61 0 64k" -c "write -P 0x62 $((4096 * M - CELL)) 128k" \
    -c "write -P 0x63 $((bsize - 512)) 512" big.qcow2 >/dev/null
start_qemu_nbd b.sock -t -r -f qcow2 -x big big.qcow2
run "$NBDVAULT" backup "nbd+unix:///big?socket=$testdir/b.sock" --repo "$repo" --disk big --json > b1.json
_kill_pid "$qemu_nbd_pid"
b1=$(jget b1.json point)

start_serve "$repo"

# check_export EXPORT REF: info, every context's map three ways, download.
check_export ()
{
    local e=$1 ref=$2 u ctx n
    u=$(serve_uri "$e")
    echo "== $e"
    run "$NBDVAULT" info --json "$u" > info.json
    "$PYTHON" -c 'import json; j = json.load(open("info.json"))
assert j["structured"] is True and j["extended_headers"] is True, j
e = j["exports"][0]
assert e["can_block_status_payload"] is True and e["is_read_only"] is True and e["can_multi_conn"] is True, e
assert e["export-size"] == '"$(stat -c %s "$ref")"', e' || fail "nbdvault info of $e"
    nbdinfo --json "$u" | "$PYTHON" -c 'import json,sys
print("\n".join(json.load(sys.stdin)["exports"][0]["contexts"]))' > contexts.txt
    n=0
    while read -r ctx; do
        n=$((n + 1))
        nbdinfo --map="$ctx" "$u" > libnbd.map
        run "$NBDVAULT" map --context "$ctx" "$u" > ours.map
        diff -u libnbd.map ours.map || fail "$e: nbdvault map --context $ctx differs from nbdinfo --map"
        "$HOSTILE_CLIENT" ext-map "$sock" "$e" "$ctx" > filter.map || fail "$e: payload filter map of $ctx failed"
        diff -u <(merged libnbd.map) <(merged filter.map) ||
            fail "$e: the payload-filtered map of $ctx differs from nbdinfo --map"
    done < contexts.txt
    [ "$n" -ge 2 ] || fail "$e offers $n contexts"
    run "$NBDCORE_TOOL" download "$u" dl.raw 4 > dl.out
    cat dl.out
    grep -qx 'connections: 4' dl.out || fail "$e: the download did not use 4 connections"
    cmp dl.raw "$ref" || fail "$e: nbdcore-tool download differs from the disk"
    rm -f dl.raw
}

for k in 1 2 3; do
    check_export "vm1@${pt[k]}" "ref-$k.raw"
done
check_export vm1 ref-3.raw
check_export "frag@$f1" frag-1.raw
check_export "frag@$f2" frag-2.raw
n=$(wc -l < libnbd.map)
[ "$n" -gt 200 ] || fail "the fragmented bitmap has only $n extents"

# The big disk: maps and a few reads (not the whole 5 GiB).
u=$(serve_uri "big@$b1")
for ctx in base:allocation qemu:allocation-depth; do
    nbdinfo --map="$ctx" "$u" > libnbd.map
    run "$NBDVAULT" map --context "$ctx" "$u" > ours.map
    diff -u libnbd.map ours.map || fail "big: nbdvault map --context $ctx differs from nbdinfo --map"
    "$HOSTILE_CLIENT" ext-map "$sock" "big@$b1" "$ctx" > filter.map
    diff -u <(merged libnbd.map) <(merged filter.map) || fail "big: the payload-filtered map of $ctx differs"
done
cat ours.map
for spec in "0 65536 a" "$((4096 * M - CELL)) 131072 b" "$((bsize - 512)) 512 c" "$((2048 * M)) 4096 0"; do
    set -- $spec
    run "$NBDCORE_TOOL" pread "$u" "$1" "$2" > got.bin
    if [ "$3" = 0 ]; then
        head -c "$2" /dev/zero > want.bin
    else
        "$PYTHON" -c 'import sys; sys.stdout.buffer.write(bytes([0x60 + " abc".index(sys.argv[1])]) * int(sys.argv[2]))' \
            "$3" "$2" > want.bin
    fi
    cmp got.bin want.bin || fail "big: pread $1+$2 returned other bytes"
done

stop_serve
