#!/bin/bash
# requires: rgw
# prune and gc of a repository in a bucket: a prune on one machine merges
# the removed points into the kept ones and rewrites their manifests, and
# another machine's cache follows (every kept point restores bit-
# identically there, from a fresh cache too); gc is refused, naming the
# holder, while a backup runs on another machine, and after it removes
# packs no manifest names; a lock left by a killed process is broken once
# stale, with a warning.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/s3-lib.sh"
requires qemu-nbd --version
requires nbdkit --filter=delay memory 1M --version

M=1048576
bucket=$(s3_bucket maint)
repo=s3://$bucket/r
run "$NBDVAULT" init --repo "$repo"
head -c $((8 * M)) /dev/urandom > base.raw
truncate -s $((16 * M)) base.raw
qemu-img convert -q -f raw -O qcow2 base.raw disk.qcow2
qemu-img bitmap --add disk.qcow2 b0
export XDG_CACHE_HOME=$testdir/host-a
for i in 1 2 3 4 5; do
    serve_disk disk.qcow2
    backup_json p$i.json "$uri" --repo "$repo" --disk vm1 --bitmap b0 >/dev/null
    unserve
    qemu-img convert -O raw disk.qcow2 ref-$(jget p$i.json point).raw
    qemu-img bitmap --clear disk.qcow2 b0
    head -c $((M + 4096)) /dev/urandom > w.bin
    qemu-io -f qcow2 -c "write -s w.bin $(( (i * 2 + 1) * M + 512)) $((M + 4096))" disk.qcow2 >/dev/null
done
XDG_CACHE_HOME=$testdir/host-b run "$NBDVAULT" list --repo "$repo" >/dev/null
run "$NBDVAULT" prune --repo "$repo" --disk vm1 --keep-last 2
s3_keys "$bucket" r/points/ > manifests
[ "$(wc -l < manifests)" = 2 ] || { cat manifests; fail "not 2 manifests after the prune"; }
grep -q '\.000002$' manifests || fail "the kept full point's manifest was not rewritten"
for cache in host-a host-b fresh; do
    XDG_CACHE_HOME=$testdir/$cache "$NBDVAULT" list --repo "$repo" --json > l.json
    [ "$("$PYTHON" -c 'import json; print(len(json.load(open("l.json"))))')" = 2 ] ||
        fail "$cache sees other than 2 points"
done
# Kept points restore on every machine (ids are each cache's own: by time).
for cache in host-a host-b fresh; do
    for n in 4 5; do
        id=$(jget p$n.json point)
        t=$(jget p$n.json point)
        XDG_CACHE_HOME=$testdir/$cache "$NBDVAULT" list --repo "$repo" --json > l.json
        pid=$("$PYTHON" -c 'import json,sys; p=json.load(open("l.json")); print(p[int(sys.argv[1])]["point"])' $((n - 4)))
        XDG_CACHE_HOME=$testdir/$cache run "$NBDVAULT" restore --repo "$repo" --disk vm1 --point "$pid" --output r.raw
        cmp r.raw ref-$id.raw || fail "$cache: the kept point $n differs"
    done
done

# gc refused while another machine's backup runs, the holder named.
head -c $((24 * M)) /dev/urandom > noise.raw
start_nbdkit slow.sock -t 1 --filter=delay file noise.raw rdelay=300ms
XDG_CACHE_HOME=$testdir/host-b "$NBDVAULT" backup "nbd+unix:///?socket=$testdir/slow.sock" \
    --repo "$repo" --disk slow --connections 1 > slow.out 2>&1 &
bk=$!
for _ in $(seq 100); do s3_keys "$bucket" r/locks/ | grep -q shared && break; sleep 0.1; done
expect_fail 1 "locked by backup of slow on host $(hostname)" "$NBDVAULT" gc --repo "$repo"
expect_fail 1 "locked by backup of slow" "$NBDVAULT" prune --repo "$repo" --disk vm1 --keep-last 1
wait $bk || { cat slow.out; fail "the backup under the refused gc failed"; }
[ -z "$(s3_keys "$bucket" r/locks/)" ] || fail "a lock object was left behind"
run "$NBDVAULT" gc --repo "$repo" | tee gc.out
run "$NBDVAULT" verify --repo "$repo"
XDG_CACHE_HOME=$testdir/host-b run "$NBDVAULT" restore --repo "$repo" --disk slow --output r.raw
cmp r.raw noise.raw || fail "the backup taken during the refused gc differs"
for n in 5; do
    run "$NBDVAULT" restore --repo "$repo" --disk vm1 --output r.raw
    cmp r.raw ref-$(jget p5.json point).raw || fail "the newest point differs after gc"
done

# A killed backup's lock: refused until stale, then broken with a warning.
XDG_CACHE_HOME=$testdir/host-b "$NBDVAULT" backup "nbd+unix:///?socket=$testdir/slow.sock" \
    --repo "$repo" --disk slow --connections 1 > /dev/null 2>&1 &
bk=$!
for _ in $(seq 100); do s3_keys "$bucket" r/locks/ | grep -q shared && break; sleep 0.1; done
kill -9 $bk
wait $bk || true
expect_fail 1 "is locked by backup of slow" "$NBDVAULT" gc --repo "$repo"
sleep 2
NBDVAULT_S3_LOCK_STALE=1 run "$NBDVAULT" gc --repo "$repo" > gc2.out 2>&1 || { cat gc2.out; fail "gc after a stale lock failed"; }
grep -q "breaking the stale lock" gc2.out || fail "no warning for the broken stale lock"
run "$NBDVAULT" verify --repo "$repo"
# A restore on one machine while another machine's gc holds the bucket: it
# waits, saying so, and restores once the gc is done.
now=$(date +%s)
printf '{"kind":"exclusive","host":"other-host","pid":4242,"what":"gc","time":%s}' "$now" > gclock.json
s3_put "$bucket" r/locks/exclusive-0123456789abcdef gclock.json
XDG_CACHE_HOME=$testdir/host-b "$NBDVAULT" restore --repo "$repo" --disk slow --output w.raw \
    > wait.out 2>&1 &
rs=$!
for _ in $(seq 100); do grep -q "waiting for the repository" wait.out && break; sleep 0.1; done
grep -q "waiting for the repository: .*locked by gc on host other-host (pid 4242" wait.out ||
    { cat wait.out; fail "the restore did not say it waits for the gc"; }
[ ! -s w.raw ] || fail "the restore wrote while the gc held the bucket"
s3_curl -X DELETE "$AWS_ENDPOINT_URL/$bucket/r/locks/exclusive-0123456789abcdef" >/dev/null
wait $rs || { cat wait.out; fail "the restore that waited for the gc failed"; }
cmp w.raw noise.raw || fail "the restore that waited for the gc differs"
# A point served from the bucket holds a shared lock: gc is refused.
"$NBDVAULT" serve --repo "$repo" --socket "$testdir/srv.sock" &
srv=$!
cleanup_fn kill $srv
for _ in $(seq 50); do [ -S srv.sock ] && break; sleep 0.1; done
expect_fail 1 "locked by serve on host $(hostname)" "$NBDVAULT" gc --repo "$repo"
kill $srv
wait $srv || true
[ -z "$(s3_keys "$bucket" r/locks/)" ] || fail "serve left its lock object"
echo OK
