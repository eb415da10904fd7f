#!/bin/bash
# serve: clients that finish OPT_GO and then send nothing.  64 of them (all
# the slots) must not keep a real client out: nbdinfo and nbdcopy still get
# in at once (the connection idle longest makes room), and the idle ones
# that were not evicted still work.  With --idle-timeout 1 an idle
# connection is closed after a second; a busy one is not.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/serve-lib.sh"
requires qemu-nbd --version
requires nbdinfo --version
requires "$PYTHON" -c 'import nbd'

repo=$testdir/repo
make_chain "$repo" 1
start_serve "$repo"
uri=$(serve_uri vm1)

# 64 clients through GO, then silent (held for 20 s at most).
"$PYTHON" - "$uri" > idle.out 2>&1 <<'PY' &
import nbd, sys, time
hs = []
for i in range(64):
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    hs.append(h)
print("holding", len(hs), flush=True)
time.sleep(2.5)     # the real clients come in meanwhile
alive = 0
for h in hs:
    try:
        h.pread(4096, 0)
        alive += 1
    except nbd.Error:
        pass
print("alive", alive, flush=True)
PY
idle=$!
for i in $(seq 100); do grep -q holding idle.out && break; sleep 0.1; done
grep -q "holding 64" idle.out || { cat idle.out; fail "the 64 idle clients did not connect"; }
sleep 1.2   # older than a second: evictable
run nbdinfo "$uri" > info.out || fail "nbdinfo was refused while 64 clients idle after GO"
grep -q export-size info.out || fail "nbdinfo printed no export"
run nbdcopy "$uri" copy.raw || fail "nbdcopy was refused while 64 clients idle after GO"
wait $idle || fail "the idle clients failed: $(cat idle.out)"
cat idle.out
alive=$(sed -n 's/^alive //p' idle.out)
# Each real client's connection took the slot of one idle client.
[ "$alive" -ge 60 ] && [ "$alive" -lt 64 ] || fail "$alive of the 64 idle clients still work"
stop_serve

# --idle-timeout 1: a silent connection is closed, an active one is not.
start_serve "$repo" "" --idle-timeout 1
uri=$(serve_uri vm1)
"$PYTHON" - "$uri" <<'PY' || fail "idle timeout"
import nbd, sys, time
quiet, busy = nbd.NBD(), nbd.NBD()
quiet.connect_uri(sys.argv[1])
busy.connect_uri(sys.argv[1])
for i in range(12):          # 3 s of a request every 0.25 s
    busy.pread(4096, 0)
    time.sleep(0.25)
try:
    quiet.pread(4096, 0)
    sys.exit("a connection idle for 3 s was not closed")
except nbd.Error as e:
    print("closed as expected:", e)
busy.pread(4096, 0)
PY
expect_fail 2 'bad --idle-timeout "soon"' "$NBDVAULT" serve --repo "$repo" --socket x.sock --idle-timeout soon
