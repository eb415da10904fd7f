#!/bin/bash
# `nbdvault serve` against hostile clients (tests/tools/hostile-client):
# export names of 4097 bytes in GO / INFO / EXPORT_NAME, an option length
# of 0xffffffff, unknown client flags, requests sent before GO, garbage,
# block status and reads past the end or over the limits, a WRITE claiming
# more than 64 MiB, malformed payload filters, clients that vanish in the
# middle of a request, 200 idle sockets (more than the 64 connection slots:
# the oldest idle handshakes are evicted, once a second old).  Each attack gets the answer
# NBD-NOTES §9 asks for, and after each the server still runs and a
# well-behaved client (nbdinfo, nbdcopy) still reads the right bytes.
# Last, points pruned while clients use them: between SET_META_CONTEXT and
# GO (the contexts chosen keep their ids, or are refused), and (with gc)
# while a client reads the point: its reads return the right bytes or
# fail, never other bytes.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/serve-lib.sh"
requires qemu-nbd --version
requires nbdinfo --version
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'
[ -x "${HOSTILE_CLIENT:-}" ] || skip "HOSTILE_CLIENT is not set (run through make integration-check)"

repo=$testdir/repo
make_chain "$repo" 3
start_serve "$repo"

# still_serves K: the server runs, lists, and nbdcopy reads point K right.
still_serves ()
{
    local k=$1
    kill -0 "$serve_pid" 2>/dev/null || { cat serve.log; fail "the server is gone"; }
    nbdinfo --list "nbd+unix:///?socket=$sock" > /dev/null || fail "nbdinfo --list fails"
    nbdcopy "$(serve_uri "vm1@${pt[k]}")" check.raw || fail "nbdcopy of point $k fails"
    cmp check.raw "ref-$k.raw" || fail "nbdcopy of point $k reads other bytes"
    rm -f check.raw
}

n=0
for a in $("$HOSTILE_CLIENT" list); do
    n=$((n + 1))
    echo "== attack $a"
    run "$HOSTILE_CLIENT" "$a" "$sock" "vm1@${pt[2]}" || fail "attack $a: the server misbehaved"
    still_serves $((n % 3 + 1))
done
[ "$n" -ge 20 ] || fail "only $n attacks"

# One READ of the whole point (10 MiB: served in pieces), in each reply mode.
for mode in simple structured extended df; do
    "$HOSTILE_CLIENT" dump "$sock" "vm1@${pt[2]}" "$mode" > dump.raw || fail "dump ($mode) failed"
    cmp dump.raw ref-2.raw || fail "one READ of the whole point ($mode replies) differs"
done
rm -f dump.raw

# 200 idle connections: a well-behaved client still gets in.
"$HOSTILE_CLIENT" idle "$sock" 200 4 > idle.out &
idle_pid=$!
for i in $(seq 100); do
    grep -q holding idle.out && break
    sleep 0.05
done
grep -q 'holding 200' idle.out || fail "the idle client did not connect"
# Handshakes younger than a second are not evicted (the first 64 idle
# sockets took the slots; the next ones were refused): a second later the
# oldest idle handshakes make room for well-behaved clients.
sleep 1.2
still_serves 1
nbdinfo "$(serve_uri "vm1@${pt[3]}")" | grep -q 'export-size' || fail "nbdinfo fails while 200 sockets idle"
wait "$idle_pid" || fail "the idle client failed"
cat idle.out
closed=$(sed -n 's/^the server closed \([0-9]*\) of 200.*/\1/p' idle.out)
[ "$closed" -ge $((200 - 64)) ] || fail "only $closed idle connections were evicted"
still_serves 2

# ---- Contexts chosen, points pruned, then GO -----------------------------------
# SET_META_CONTEXT gives ids to contexts of the export as it is then; a
# prune before GO changes the export's list of contexts.  since-P2 of point
# 3 survives the pruning of point 1: it is answered under the id it was
# given, with its own extents; since-P1 is gone: refused, never answered
# with another context's extents.
u3=$(serve_uri "vm1@${pt[3]}")
nbdinfo --map="qemu:dirty-bitmap:since-${pt[2]}" "$u3" > since2.map
for m in 1 2; do
    "$HOSTILE_CLIENT" race-set-go "$sock" "vm1@${pt[3]}" "qemu:dirty-bitmap:since-${pt[m]}" \
        "$testdir/go1" > "race$m.out" 2> "race$m.err" &
    eval "race$m=\$!"
done
for i in $(seq 100); do
    grep -q waiting race1.err && grep -q waiting race2.err && break
    sleep 0.05
done
run "$NBDVAULT" prune --repo "$repo" --disk vm1 --keep-last 2 || fail "prune failed"
touch go1
wait "$race1" || { cat race1.err; fail "race-set-go since-${pt[1]} failed"; }
wait "$race2" || { cat race2.err; fail "race-set-go since-${pt[2]} failed"; }
cat race1.out
grep -qx 'refused 22' race1.out || fail "a context pruned between SET_META_CONTEXT and GO was answered"
diff -u <(merged since2.map) race2.out ||
    fail "since-${pt[2]}, chosen before a prune and mapped after, has other extents"
still_serves 2
still_serves 3

# ---- A point pruned and collected while a client reads it ---------------------
# Two connections to point 2: one has read the first half, the other
# nothing.  After prune --keep-last 1 and gc, every read returns the
# point's bytes or an error.  (A fresh server: its chunk cache holds only
# what the first connection read.)
stop_serve
start_serve "$repo"
"$PYTHON" - "$(serve_uri "vm1@${pt[2]}")" ref-2.raw "$testdir/go" > pruned.out <<'EOF' &
import nbd, os, sys, time
uri, ref_path, go = sys.argv[1:4]
ref = open(ref_path, "rb").read()
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(uri)
b.connect_uri(uri)
size = a.get_size()
assert size == len(ref)
for off in range(0, size // 2, 65536):
    assert a.pread(min(65536, size - off), off) == ref[off:off + 65536], "before prune"
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
ok = err = 0
reads = [(off, min(65536, size - off)) for off in range(0, size, 65536)]
reads += [(off, min(70000, size - off)) for off in range(12345, size, 300000)]
for h in (a, b):
    for off, n in reads:
        try:
            got = h.pread(n, off)
        except nbd.Error as e:
            err += 1
            continue
        if got != ref[off:off + n]:
            raise SystemExit("WRONG BYTES: %d+%d of the pruned point (connection %s): %r... where %r..."
                             % (off, n, "ab"[h is b], got[:8], ref[off:off + 8]))
        ok += 1
print("after prune and gc: %d reads right, %d failed" % (ok, err), flush=True)
EOF
reader=$!
for i in $(seq 100); do
    grep -q ready pruned.out && break
    sleep 0.05
done
grep -q ready pruned.out || fail "the reader of point 2 did not start"
run "$NBDVAULT" prune --repo "$repo" --disk vm1 --keep-last 1 || fail "prune failed"
run "$NBDVAULT" gc --repo "$repo" || fail "gc failed"
touch go
wait "$reader" || { cat pruned.out; fail "a pruned point returned wrong bytes (or the reader failed)"; }
cat pruned.out
# New connections no longer find it; the kept point is whole.
expect_fail 1 'error|vm1@' nbdinfo "$(serve_uri "vm1@${pt[2]}")"
still_serves 3
nbdcopy "$(serve_uri vm1)" newest.raw
cmp newest.raw ref-3.raw || fail "the newest point changed"
stop_serve
