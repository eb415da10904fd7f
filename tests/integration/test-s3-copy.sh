#!/bin/bash
# requires: rgw
# nbdvault copy from a local repository to a bucket: every point the bucket
# lacks is copied and restores bit-identically from it; a rerun copies and
# uploads nothing; a copy cut short (one point, then all) uploads no chunk
# twice; copy-to in a config file (backup's, run's) copies each new point at once; the
# bucket keeps its own retention (prune on it leaves the local one alone).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/s3-lib.sh"
requires qemu-nbd --version

M=1048576
bucket=$(s3_bucket copy)
to=s3://$bucket/offsite
local=$testdir/local
run "$NBDVAULT" init --repo "$to"
head -c $((6 * M)) /dev/urandom > base.raw
truncate -s $((12 * M)) base.raw
qemu-img convert -q -f raw -O qcow2 base.raw disk.qcow2
qemu-img bitmap --add disk.qcow2 b0
for i in 1 2 3; do
    serve_disk disk.qcow2
    backup_json p$i.json "$uri" --repo "$local" --disk vm1 --bitmap b0 >/dev/null
    unserve
    qemu-img convert -O raw disk.qcow2 ref-$i.raw
    qemu-img bitmap --clear disk.qcow2 b0
    head -c $((M / 2)) /dev/urandom > w.bin
    qemu-io -f qcow2 -c "write -s w.bin $((i * 2 * M + 4096)) $((M / 2))" disk.qcow2 >/dev/null
done

# Cut short: the first point alone, then the rest.
run "$NBDVAULT" copy --repo "$local" --to "$to" --disk vm1 --point "$(jget p1.json point)" --json > c1.json
[ "$(jget c1.json copied)" = 1 ] || fail "the first copy did not copy one point"
run "$NBDVAULT" copy --repo "$local" --to "$to" --json > c2.json
[ "$(jget c2.json copied)" = 2 ] || fail "the second copy did not copy the two others"
[ "$(jget c2.json skipped)" = 1 ] || fail "the second copy did not skip the first point"
# Each incremental brought one 512 KiB change (9 cells with the unaligned
# start), nothing of the first point again.
[ "$(jget c2.json chunks_new)" -le 18 ] || fail "chunks uploaded twice: $(jget c2.json chunks_new) new"
keys_before=$(s3_keys "$bucket" offsite/ | wc -l)
run "$NBDVAULT" copy --repo "$local" --to "$to" --json > c3.json
[ "$(jget c3.json copied)" = 0 ] || fail "a rerun copied again"
[ "$(jget c3.json chunks_new)" = 0 ] || fail "a rerun uploaded chunks"
[ "$(s3_keys "$bucket" offsite/ | wc -l)" = "$keys_before" ] || fail "a rerun wrote objects"
"$NBDVAULT" list --repo "$to" --json > l.json
for i in 1 2 3; do
    id=$("$PYTHON" -c 'import json,sys; print(json.load(open("l.json"))[int(sys.argv[1])]["point"])' $((i - 1)))
    run "$NBDVAULT" restore --repo "$to" --disk vm1 --point "$id" --output r.raw
    cmp r.raw ref-$i.raw || fail "copied point $i differs"
done
kinds=$("$PYTHON" -c 'import json; print(" ".join(p["kind"] for p in json.load(open("l.json"))))')
[ "$kinds" = "full incremental incremental" ] || fail "copied chain has kinds: $kinds"

# copy-to: a backup's new point leaves the host at once.
cat > agent.conf <<CONF
[repository]
path = $local
copy-to = $to
CONF
serve_disk disk.qcow2
run "$NBDVAULT" backup "$uri" --config agent.conf --disk vm1 --bitmap b0 2> b.err
cat b.err
grep -q "copied 1 point" b.err || fail "copy-to did not copy the new point"
unserve
qemu-img convert -O raw disk.qcow2 ref-4.raw
run "$NBDVAULT" restore --repo "$to" --disk vm1 --output r.raw
cmp r.raw ref-4.raw || fail "the point copied by copy-to differs"

# copy-to in a run's job file: the run's new point reaches the bucket.
qemu-io -f qcow2 -c "write -P 0x5a $((9 * M)) 65536" disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 ref-5.raw
serve_disk disk.qcow2
cat > job.conf <<CONF
[defaults]
repo = $local
copy-to = $to
[vm vm1]
uri = $uri
bitmap = b0
CONF
run "$NBDVAULT" run --config job.conf 2> run.err || { cat run.err; fail "the run failed"; }
grep -q "copied 1 point" run.err || { cat run.err; fail "the run did not copy its new point"; }
unserve
run "$NBDVAULT" restore --repo "$to" --disk vm1 --output r.raw
cmp r.raw ref-5.raw || fail "the point copied by the run differs"

# The bucket's own retention.
run "$NBDVAULT" prune --repo "$to" --disk vm1 --keep-last 1
[ "$("$NBDVAULT" list --repo "$to" --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ] ||
    fail "the bucket kept other than 1 point"
[ "$("$NBDVAULT" list --repo "$local" --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 5 ] ||
    fail "pruning the bucket touched the local repository"
run "$NBDVAULT" restore --repo "$to" --disk vm1 --output r.raw
cmp r.raw ref-5.raw || fail "the kept point differs after the bucket's prune"
run "$NBDVAULT" gc --repo "$to"
run "$NBDVAULT" verify --repo "$to"
expect_fail 2 "needs --disk" "$NBDVAULT" copy --repo "$local" --to "$to" --point 1
echo OK
