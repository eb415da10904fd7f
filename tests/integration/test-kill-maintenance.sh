#!/bin/bash
# Nothing is lost when prune or gc is killed with SIGKILL at any moment.
#
# A chain of six points of a qcow2 disk (random data overwritten each round,
# so that prune makes garbage and gc has packs to rewrite).  The duration of
# `prune --keep-last 2` and of `gc` is measured once on a copy; then each
# runs on fresh copies of the repository and is killed after delays spread
# from 0 to past its whole run.  After each kill: verify passes; list shows
# every point that remains whole, which is all of them or the newest ones
# (prune removes the oldest first, one point per transaction, so no point
# is ever half removed) and always the kept ones; every listed point
# restores bit-identically; and the next prune or gc succeeds, breaking the
# dead process's lock, and verify still passes.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires "$PYTHON" -c 'import sqlite3'

M=1048576
KILLS=${KILLS:-12}

# ---- The repository: six points -------------------------------------------
qemu-img create -q -f qcow2 disk.qcow2 $((32 * M))
qemu-io -f qcow2 -c "write -P 0x10 0 4M" disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
ids=()
for i in 1 2 3 4 5 6; do
    serve_disk disk.qcow2
    backup_json p$i.json "$uri" --repo repo --disk vm1 --bitmap b0 >/dev/null
    unserve
    id=$(jget p$i.json point)
    ids+=("$id")
    qemu-img convert -O raw disk.qcow2 "ref-$id.raw"
    qemu-img bitmap --clear disk.qcow2 b0
    head -c $((4 * M)) /dev/urandom > rand.bin
    qemu-io -f qcow2 -c "write -s rand.bin $((24 * M)) 4M" -c "write -P 0x2$i $((i * M)) 512k" \
            -c "write -P 0x3$i $((16 * M + i * 100000)) 300000" \
            -c "write -z $((i * M + 65536)) 64k" disk.qcow2 >/dev/null
done
all="${ids[*]}"
kept="${ids[4]} ${ids[5]}"
echo "points: $all; prune --keep-last 2 keeps $kept"

listed () { "$NBDVAULT" list --repo "$1" --disk vm1 --json |
    "$PYTHON" -c 'import json,sys; print(" ".join(str(p["point"]) for p in json.load(sys.stdin)))'; }
locks () { "$PYTHON" -c 'import sqlite3,sys
db = sqlite3.connect("file:%s/catalog.db?mode=ro" % sys.argv[1], uri=True)
print(" ".join(r[0] for r in db.execute("SELECT name FROM locks")))' "$1"; }
now () { date +%s.%N; }

# Every listed point restores to the bytes it was taken from.
check_points ()
{
    local r=$1 p
    for p in $(listed "$r"); do
        "$NBDVAULT" restore --repo "$r" --disk vm1 --point "$p" --output r.raw ||
            fail "$r: restore of point $p failed"
        cmp r.raw "ref-$p.raw" || fail "$r: point $p does not restore to its disk"
    done
    rm -f r.raw
}

# The points left are the newest ones of the chain, the kept among them.
check_suffix ()
{
    local got=$1 i
    for i in 0 1 2 3 4; do
        [ "$got" = "${ids[*]:$i}" ] && return 0
    done
    fail "list shows '$got': neither every point ($all) nor the newest ones down to $kept"
}

# kill_runs WHAT REPO-TEMPLATE DURATION CMD...: copies, runs CMD on the
# copy in the background, SIGKILLs it after a delay, then checks the copy.
kill_runs ()
{
    local what=$1 base=$2 dur=$3 k delay pid rc r out
    shift 3
    for k in $(seq 0 $((KILLS - 1))); do
        # 0 .. 1.2 x the measured run: the last kills may come too late.
        delay=$("$PYTHON" -c "print('%.4f' % ($dur * 1.2 * $k / ($KILLS - 1)))")
        r=$what-$k
        rm -rf "$r"
        cp -a "$base" "$r"
        "$@" --repo "$r" > "$r.out" 2> "$r.err" &
        pid=$!
        sleep "$delay"
        kill -9 "$pid" 2>/dev/null || :
        rc=0; wait "$pid" || rc=$?
        [ "$rc" = 0 ] || [ "$rc" = 137 ] || fail "$what exited $rc: $(cat "$r.err")"
        echo "$what killed after ${delay}s: exit $rc; points: $(listed "$r"); locks: $(locks "$r")"
        "$NBDVAULT" verify --repo "$r" > "$r.verify" 2>&1 ||
            { cat "$r.verify"; fail "$r: verify fails after $what was killed after ${delay}s"; }
        got=$(listed "$r")
        if [ "$what" = prune ]; then
            check_suffix "$got"
        else
            [ "$got" = "$kept" ] || fail "$r: gc changed the points: '$got'"
        fi
        check_points "$r"

        # The next run succeeds; a lock the killed one held is broken.
        held=$(locks "$r")
        out=$("$@" --repo "$r" 2>&1) || fail "$r: $what after a killed one failed: $out"
        [ -z "$(locks "$r")" ] || fail "$r: locks left after $what: $(locks "$r")"
        if [ "$what" = gc ] && [ -n "$held" ]; then
            grep -q "broke stale lock gc of pid $pid" <<<"$out" ||
                fail "$r: gc did not say it broke the stale lock: $out"
        fi
        "$NBDVAULT" verify --repo "$r" > "$r.verify" 2>&1 ||
            { cat "$r.verify"; fail "$r: verify fails after a second $what"; }
        [ "$(listed "$r")" = "$kept" ] || fail "$r: after a second $what: $(listed "$r")"
        rm -rf "$r" "$r".*
    done
}

# ---- prune -----------------------------------------------------------------
cp -a repo timing
t0=$(now)
run "$NBDVAULT" prune --repo timing --disk vm1 --keep-last 2 >/dev/null
dur=$("$PYTHON" -c "print($(now) - $t0)")
echo "prune takes ${dur}s"
[ "$(listed timing)" = "$kept" ] || fail "prune kept '$(listed timing)'"
kill_runs prune repo "$dur" "$NBDVAULT" prune --disk vm1 --keep-last 2

# ---- gc, on the pruned repository ------------------------------------------
cp -a timing pruned
run "$NBDVAULT" gc --repo timing --dry-run
t0=$(now)
run "$NBDVAULT" gc --repo timing --json > gc.json
dur=$("$PYTHON" -c "print($(now) - $t0)")
cat gc.json
echo "gc takes ${dur}s"
[ $(( $(jget gc.json packs_removed) + $(jget gc.json packs_rewritten) )) -gt 0 ] ||
    fail "gc neither removed nor rewrote a pack: the kills would test little"
kill_runs gc pruned "$dur" "$NBDVAULT" gc
