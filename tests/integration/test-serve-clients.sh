#!/bin/bash
# `nbdvault serve` read by the reference clients.  A chain of three points
# (full, then incrementals with unaligned writes, write-zeroes, a discard
# and a write to the last partial cell of a disk whose size is not a
# multiple of 64 KiB) is served on a Unix socket; for each point:
# nbdinfo --list shows it; base:allocation reports as zero only bytes that
# are zero, as data every cell that holds data, and as zero at least what
# qemu-nbd reported zero; qemu:allocation-depth equals qemu-nbd -A on the
# equivalent overlay chain; qemu:dirty-bitmap:since-P is dirty exactly in
# the cells that changed since P; nbdcopy (multi-conn), qemu-img compare
# and qemu-io read the point's bytes; writes are refused (QEMU cannot open
# it writable, libnbd's write/zero/trim get EPERM from the server); QEMU
# reads the dirty bitmaps (x-dirty-bitmap) as libnbd does; a qcow2
# overlay backed by a served point reads it.  A second server on the same
# socket is refused.  SIGTERM stops the server (exit 0, socket removed)
# even with a client connected.  With --max-connections 1 multi-conn is
# not advertised; with 2, a client asking for 4 connections gets 2.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/serve-lib.sh"
requires qemu-nbd --version
requires qemu-io --version
requires nbdinfo --version
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'

repo=$testdir/repo
make_chain "$repo" 3
start_serve "$repo"

# ---- Listing --------------------------------------------------------------
nbdinfo --list "nbd+unix:///?socket=$sock" > list.txt
cat list.txt
for k in 1 2 3; do
    grep -qx "export=\"vm1@${pt[k]}\":" list.txt || fail "nbdinfo --list does not show vm1@${pt[k]}"
done
grep -qx 'export="vm1":' list.txt || fail "nbdinfo --list does not show vm1 (the newest point)"

# ---- Each point -------------------------------------------------------------
for k in 1 2 3; do
    u=$(serve_uri "vm1@${pt[k]}")
    echo "== point $k: $u"

    # The contexts: allocation, depth, one bitmap per earlier point.
    want="base:allocation qemu:allocation-depth"
    for m in $(seq 1 $((k - 1))); do
        want="$want qemu:dirty-bitmap:since-${pt[m]}"
    done
    got=$(nbdinfo --json "$u" | "$PYTHON" -c 'import json,sys
print(" ".join(json.load(sys.stdin)["exports"][0]["contexts"]))')
    [ "$got" = "$want" ] || fail "point $k offers contexts \"$got\", not \"$want\""

    nbdinfo --map "$u" > "s-$k.alloc"
    check_serve alloc "s-$k.alloc" "ref-$k.raw" "q-$k.alloc" || {
        cat "s-$k.alloc" "q-$k.alloc"; fail "base:allocation of point $k is wrong"; }
    nbdinfo --map=qemu:allocation-depth "$u" > "s-$k.depth"
    check_serve depth "s-$k.depth" "q-$k.depth" "$chain_size" || {
        cat "s-$k.depth" "q-$k.depth"; fail "qemu:allocation-depth of point $k is wrong"; }
    for m in $(seq 1 $((k - 1))); do
        nbdinfo --map="qemu:dirty-bitmap:since-${pt[m]}" "$u" > "s-$k-$m.dirty"
        check_serve dirty "s-$k-$m.dirty" "ref-$k.raw" "ref-$m.raw" || {
            cat "s-$k-$m.dirty"; fail "since-${pt[m]} of point $k is wrong"; }
    done

    run nbdcopy "$u" "copy-$k.raw"
    cmp "copy-$k.raw" "ref-$k.raw" || fail "nbdcopy of point $k differs from the disk"
    rm -f "copy-$k.raw"
    run qemu-img compare -f raw -F raw "$u" "ref-$k.raw" || fail "qemu-img compare: point $k differs"
done

# The disk's name alone is its newest point.
run nbdcopy "$(serve_uri vm1)" newest.raw
cmp newest.raw ref-3.raw || fail "export vm1 is not the newest point"

# Since-P of a point that is not a parent: point 3 since point 1.
grep -q 1 <(awk '$3 == 1' s-3-1.dirty) || fail "nothing dirty in point 3 since point 1"

# ---- QEMU's own client reads the patterns -----------------------------------
qread ()
{
    local u=$1 out
    shift
    local args=() c
    for c in "$@"; do
        args+=(-c "read -P $c")
    done
    out=$(qemu-io -r -f raw "${args[@]}" "$u" 2>&1) || { echo "$out"; fail "qemu-io read of $u failed"; }
    echo "$out"
    ! grep -q 'Pattern verification failed' <<<"$out" || fail "qemu-io read other bytes from $u"
}
s=$chain_size
qread "$(serve_uri "vm1@${pt[1]}")" "0x11 0 $M" "0x13 $((s - 4096)) 4096" "0 $((2 * M)) $M" \
    "0x12 $((5 * M)) $M"
qread "$(serve_uri "vm1@${pt[2]}")" "0x21 12345 100" "0 $M 256k" "0x22 $((s - 100)) 100" \
    "0x23 $((8 * M + 1000)) 70000" "0 $((5 * M)) 512k" "0 $((5 * M + 600000)) 5000" \
    "0x12 $((5 * M + 605000)) 1000" "0x11 $((M + 256 * 1024)) 4096"
qread "$(serve_uri "vm1@${pt[3]}")" "0x31 $((M + 512)) 1536" "0 $M 512" "0 $((8 * M)) 64k" \
    "0x23 $((8 * M + 65536)) 5464" "0x32 $((3 * M)) $M" "0x22 $((s - 100)) 100"

# ---- QEMU's client reads the bitmaps too (x-dirty-bitmap: dirty shows as
# "data": false), one context at a time with REQ_ONE ---------------------------
for m in 1 2; do
    qemu-img map --output=json --image-opts \
        "driver=nbd,server.type=unix,server.path=$sock,export=vm1@${pt[3]},x-dirty-bitmap=qemu:dirty-bitmap:since-${pt[m]}" |
        "$PYTHON" -c 'import json,sys
for e in json.load(sys.stdin):
    print(e["start"], e["length"], 0 if e["data"] else 1)' > "qemu-since-$m.map"
    diff -u <(merged "s-3-$m.dirty") <(merged "qemu-since-$m.map") ||
        fail "QEMU reads since-${pt[m]} of point 3 otherwise than libnbd"
done

# ---- Writes are refused ------------------------------------------------------
u1=$(serve_uri "vm1@${pt[1]}")
expect_fail 1 'Permission denied' qemu-io -f raw -c 'write -P 0x55 0 512' "$u1"
# At the protocol level: libnbd without its client-side checks sends the
# commands; the server answers EPERM and keeps the connection.
"$PYTHON" - "$u1" <<'EOF' || fail "writes were not refused with EPERM"
import errno, nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
assert h.is_read_only(), "the export is not read-only"
assert h.can_multi_conn(), "no multi-conn"
for name, op in (("pwrite", lambda: h.pwrite(b"\x55" * 4096, 0)),
                 ("zero", lambda: h.zero(4096, 0)),
                 ("trim", lambda: h.trim(4096, 0))):
    try:
        op()
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, "%s failed with %s, not EPERM" % (name, e)
        print("%s refused: %s" % (name, e))
    else:
        raise SystemExit("%s succeeded on a read-only export" % name)
# Still connected, still the same bytes.
assert h.pread(4096, 0) == b"\x11" * 4096, "read after refused writes"
h.shutdown()
EOF

# ---- A qcow2 overlay backed by a served point ---------------------------------
run qemu-img create -q -f qcow2 -b "$u1" -F raw ov.qcow2
run qemu-img compare -f qcow2 -F raw ov.qcow2 ref-1.raw || fail "overlay does not read point 1"
qemu-io -f qcow2 -c 'write -P 0x77 0 64k' ov.qcow2 >/dev/null
qemu-io -f qcow2 -c 'read -P 0x77 0 64k' -c 'read -P 0x11 64k 64k' ov.qcow2 | tee ov.out
! grep -q 'Pattern verification failed' ov.out || fail "overlay reads wrong bytes"
run nbdcopy "$u1" p1-again.raw
cmp p1-again.raw ref-1.raw || fail "a write to the overlay changed the served point"

# ---- A second server on the same socket is refused; the first goes on ------------
expect_fail 1 'already running' timeout 10 "$NBDVAULT" serve --repo "$repo" --socket "$sock"
[ -S "$sock" ] || fail "the refused server removed the first one's socket"
run nbdcopy "$u1" p1-third.raw
cmp p1-third.raw ref-1.raw || fail "the first server no longer serves point 1"

# ---- SIGTERM with a client connected --------------------------------------------
"$PYTHON" -c 'import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); print("connected", flush=True); time.sleep(60)' "$u1" > idle.out &
idle=$!
cleanup_fn kill "$idle"
for i in $(seq 50); do
    grep -q connected idle.out && break
    sleep 0.1
done
grep -q connected idle.out || fail "the idle client did not connect"
stop_serve
echo "server stopped"

# ---- --max-connections ------------------------------------------------------------
# One connection: multi-conn is not advertised (a second connection would
# be refused), and every client works with one.
start_serve "$repo" "" --max-connections 1
nbdinfo --json "$u1" | "$PYTHON" -c 'import json,sys
assert json.load(sys.stdin)["exports"][0]["can_multi_conn"] is False' ||
    fail "multi-conn advertised with --max-connections 1"
for i in 1 2 3; do
    run nbdcopy "$u1" mc1.raw
    cmp mc1.raw ref-1.raw || fail "nbdcopy with --max-connections 1 differs"
    run "$NBDVAULT" backup "$u1" --repo "$testdir/mc-$i" --disk vm1 --json > mc.json
    [ "$(jget mc.json bytes_read)" -gt 0 ] || fail "backup with --max-connections 1 read nothing"
    run "$NBDVAULT" restore --repo "$testdir/mc-$i" --disk vm1 --output mc-r.raw
    cmp mc-r.raw ref-1.raw || fail "backup through --max-connections 1 restores other bytes"
done
stop_serve
# Two: a client asking for four connections gets two (the others are
# refused, not made to evict the first ones mid-handshake).
start_serve "$repo" "" --max-connections 2
for i in 1 2 3 4 5; do
    run "$NBDCORE_TOOL" download "$u1" mc2.raw 4 > mc2.out || fail "download with --max-connections 2 failed"
    cat mc2.out
    grep -qx 'connections: 2' mc2.out || fail "download with --max-connections 2 did not use 2 connections"
    cmp mc2.raw ref-1.raw || fail "download with --max-connections 2 differs"
done
stop_serve
