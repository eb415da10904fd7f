#!/bin/bash
# prune in batches: a chain of 300 incremental points (a bitmap nobody
# clears, a small write before each backup); prune --keep-last 7 killed
# with SIGKILL part-way leaves a whole catalog (integrity_check ok, every
# remaining point restores to the disk as it was at its time); the rerun
# removes the rest in one command, and the 7 kept points restore.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires "$PYTHON" -c 'import nbd'
requires sqlite3 --version

N=${PRUNE_TEST_POINTS:-300}
# Built with the sanitizers every backup is slower: fewer points, smaller
# batches (still several of them).
case $NBDVAULT in
*build-san*) N=${PRUNE_TEST_POINTS:-120}; export NBDVAULT_PRUNE_BATCH=32 ;;
esac
repo=$testdir/repo
qemu-img create -q -f qcow2 disk.qcow2 2M
qemu-img bitmap --add disk.qcow2 b0
start_qemu_nbd d.sock -t -f qcow2 -B b0 --shared=8 disk.qcow2
uri="nbd+unix:///?socket=$testdir/d.sock"

# Write, back up, record the point's sha256: N times.
"$PYTHON" - "$uri" "$NBDVAULT" "$repo" "$N" > sums.txt <<'PY' || fail "building the chain failed"
import hashlib, json, nbd, random, subprocess, sys
uri, vault, repo, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
random.seed(5)
for i in range(n):
    h.pwrite(bytes([i % 251 + 1]) * 512, random.randrange(size // 512) * 512)
    h.flush()
    out = subprocess.run([vault, "backup", uri, "--repo", repo, "--disk", "d", "--bitmap", "b0",
                          "--connections", "1", "--json"], check=True, capture_output=True).stdout
    p = json.loads(out)["point"]
    print(p, hashlib.sha256(h.pread(size, 0)).hexdigest(), flush=True)
PY
[ "$(wc -l < sums.txt)" = $N ] || fail "the chain has $(wc -l < sums.txt) points, not $N"

# check_points: every point left restores to its recorded sha256.
check_points ()
{
    local p sum got
    for p in $("$NBDVAULT" list --repo "$repo" --disk d --json |
               "$PYTHON" -c 'import json,sys; print(" ".join(str(x["point"]) for x in json.load(sys.stdin)))'); do
        sum=$(awk -v p=$p '$1 == p { print $2 }' sums.txt)
        "$NBDVAULT" restore --repo "$repo" --disk d --point $p --output r.raw >/dev/null \
            || fail "restore of point $p failed"
        got=$(sha256sum r.raw | cut -d' ' -f1)
        [ "$got" = "$sum" ] || fail "point $p restores to other bytes after the prune"
    done
}

"$NBDVAULT" prune --repo "$repo" --disk d --keep-last 7 > prune1.out 2>&1 &
pid=$!
sleep 0.$((RANDOM % 5 + 1))
kill -9 $pid 2>/dev/null || :
wait $pid 2>/dev/null || :
left=$("$NBDVAULT" list --repo "$repo" --disk d --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "after the kill: $left points"
[ "$(sqlite3 "$repo/catalog.db" 'PRAGMA integrity_check')" = ok ] || fail "integrity_check after the kill"
# A state between: whole batches removed, or none (the restores tell).
check_points

run "$NBDVAULT" prune --repo "$repo" --disk d --keep-last 7 > prune2.out || fail "the rerun of prune failed"
tail -n 1 prune2.out
grep -q "kept 7$" prune2.out || fail "the rerun did not keep 7"
[ "$("$NBDVAULT" list --repo "$repo" --disk d --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 7 ] \
    || fail "not 7 points after the prune"
check_points
run "$NBDVAULT" verify --repo "$repo" || fail "verify after the prune"
