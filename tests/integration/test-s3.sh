#!/bin/bash
# requires: rgw
# A repository in a bucket (Ceph RGW, SigV4 checked): a full backup and an
# incremental of a live qcow2 export restore bit-identically from the
# bucket; two hosts (two caches) back up two disks into one bucket at once,
# each sees the other's points, and content they share is stored once; a
# catalog rebuilt on an empty cache restores every point and serves it;
# bodies spooled to a file restore as well; wrong credentials, a missing
# bucket and a damaged manifest give clear errors and exit 1, and no secret
# appears in any output.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/s3-lib.sh"
requires qemu-nbd --version
requires nbdcopy --version

M=1048576
bucket=$(s3_bucket main)
repo=s3://$bucket/nightly
run "$NBDVAULT" init --repo "$repo"
expect_fail 1 "already holds a repository" "$NBDVAULT" init --repo "$repo"

# A disk of random data with a hole, and its bitmap.
head -c $((24 * M)) /dev/urandom > base.raw
truncate -s $((40 * M)) base.raw
qemu-img convert -q -f raw -O qcow2 base.raw disk.qcow2
qemu-img bitmap --add disk.qcow2 b0
cp base.raw ref-1.raw

serve_disk disk.qcow2
backup_json p1.json "$uri" --repo "$repo" --disk vm1 --bitmap b0
[ "$(jget p1.json kind)" = full ] || fail "the first backup is not full"
unserve
qemu-img bitmap --clear disk.qcow2 b0
head -c $((3 * M)) /dev/urandom > new.bin
qemu-io -f qcow2 -c "write -s new.bin $((5 * M + 4096)) $((3 * M))" -c "write -z $((30 * M)) 1M" \
        disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 ref-2.raw
serve_disk disk.qcow2
backup_json p2.json "$uri" --repo "$repo" --disk vm1 --bitmap b0
[ "$(jget p2.json kind)" = incremental ] || fail "the second backup is not incremental"
[ "$(jget p2.json bytes_read)" -le $((5 * M)) ] || fail "the incremental read more than the bitmap"
unserve
p1=$(jget p1.json point)
p2=$(jget p2.json point)
for p in 1 2; do
    id=$(jget p$p.json point)
    run "$NBDVAULT" restore --repo "$repo" --disk vm1 --point "$id" --output r.raw
    cmp r.raw ref-$p.raw || fail "point $p restored from the bucket differs"
done
# The bucket holds the config, the packs and one manifest per point.
s3_keys "$bucket" nightly/ > keys
grep -qx nightly/config keys || fail "no config object"
[ "$(grep -c '^nightly/points/' keys)" = 2 ] || fail "not one manifest per point"
grep -q '^nightly/packs/.*\.pack$' keys || fail "no pack in the bucket"

# Bodies past NBDVAULT_S3_SPOOL_ABOVE go through a spool file instead of
# memory (48 MiB: a pack fits): here the packs past 4 MiB, each first in
# memory, then moved to the file.
run "$NBDVAULT" init --repo "s3://$bucket/spooled"
serve_disk disk.qcow2
NBDVAULT_S3_SPOOL_ABOVE=$((4 * M + 1)) run "$NBDVAULT" backup "$uri" --repo "s3://$bucket/spooled" --disk vm1
unserve
run "$NBDVAULT" verify --repo "s3://$bucket/spooled" --read-data
run "$NBDVAULT" restore --repo "s3://$bucket/spooled" --disk vm1 --output r.raw
cmp r.raw ref-2.raw || fail "a point whose packs were spooled restores differently"
# ... and with NBDVAULT_S3_SPOOL_ABOVE=0 every body, from its first byte.
run "$NBDVAULT" init --repo "s3://$bucket/spooled0"
serve_disk disk.qcow2
NBDVAULT_S3_SPOOL_ABOVE=0 run "$NBDVAULT" backup "$uri" --repo "s3://$bucket/spooled0" --disk vm1
unserve
run "$NBDVAULT" restore --repo "s3://$bucket/spooled0" --disk vm1 --output r.raw
cmp r.raw ref-2.raw || fail "a point whose every body was spooled restores differently"
[ "$(s3_keys "$bucket" spooled/packs/ | wc -l)" -ge 1 ] || fail "no spooled pack in the bucket"

# ---- Two hosts, one bucket -------------------------------------------------
head -c $((16 * M)) /dev/urandom > other.raw
qemu-img convert -q -f raw -O qcow2 other.raw other.qcow2
start_qemu_nbd o.sock -t -r -f qcow2 -x vm2 --shared=8 other.qcow2
uri2="nbd+unix:///vm2?socket=$testdir/o.sock"
start_qemu_nbd s.sock -t -r -f raw -x same --shared=8 ref-2.raw
uri3="nbd+unix:///same?socket=$testdir/s.sock"
# Host A backs up vm1 again while host B backs up vm2.
serve_disk disk.qcow2
XDG_CACHE_HOME=$testdir/host-a "$NBDVAULT" backup "$uri" --repo "$repo" --disk vm1 --bitmap b0 \
    --json > a.json &
a=$!
XDG_CACHE_HOME=$testdir/host-b "$NBDVAULT" backup "$uri2" --repo "$repo" --disk vm2 --json > b.json &
b=$!
wait $a || fail "host A's backup failed"
wait $b || fail "host B's backup failed"
XDG_CACHE_HOME=$testdir/host-a "$NBDVAULT" list --repo "$repo" --json > la.json
XDG_CACHE_HOME=$testdir/host-b "$NBDVAULT" list --repo "$repo" --json > lb.json
for f in la.json lb.json; do
    n=$("$PYTHON" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' $f)
    [ "$n" = 4 ] || fail "$f: $n points, wanted 4 (each host sees the other's)"
done
# Host B backs up a disk holding vm1's content: nothing new to store.
XDG_CACHE_HOME=$testdir/host-b "$NBDVAULT" backup "$uri3" --repo "$repo" --disk copy --json > c.json
[ "$(jget c.json chunks_new)" = 0 ] || fail "content already in the bucket was stored again"
XDG_CACHE_HOME=$testdir/host-b run "$NBDVAULT" restore --repo "$repo" --disk vm2 --output r.raw
cmp r.raw other.raw || fail "host B's point differs"
XDG_CACHE_HOME=$testdir/host-a run "$NBDVAULT" restore --repo "$repo" --disk vm2 --output r.raw
cmp r.raw other.raw || fail "host B's point restored by host A differs"

# ---- An empty machine --------------------------------------------------------
export XDG_CACHE_HOME=$testdir/new-machine
# (Pages of two keys: every listing takes its continuation tokens.)
NBDVAULT_S3_LIST_MAX=2 run "$NBDVAULT" catalog rebuild --repo "$repo" | tee rebuild.out
grep -q "5 restore point" rebuild.out || fail "the rebuilt catalog does not hold 5 points"
# Numbered by their start, the same on every machine that rebuilds (and
# points 1 and 2, made before any other, as host A numbered them: below).
"$NBDVAULT" list --repo "$repo" --json > list-new.json
XDG_CACHE_HOME=$testdir/other-new run "$NBDVAULT" catalog rebuild --repo "$repo" >/dev/null
XDG_CACHE_HOME=$testdir/other-new "$NBDVAULT" list --repo "$repo" --json > list-other.json
cmp list-new.json list-other.json || { diff list-new.json list-other.json; fail "two rebuilt caches number the points otherwise"; }
for p in 1 2; do
    run "$NBDVAULT" restore --repo "$repo" --disk vm1 --point "$(jget p$p.json point)" --output r.raw
    cmp r.raw ref-$p.raw || fail "point $p restored on an empty machine differs"
done
run "$NBDVAULT" verify --repo "$repo" --json > v0.json
[ "$(jget v0.json chunks)" = 0 ] || fail "verify of a bucket read chunks without --read-data"
[ "$(jget v0.json packs_index_only)" -gt 0 ] || fail "verify checked no pack's index"
run "$NBDVAULT" verify --repo "$repo" --read-data --json > v1.json
[ "$(jget v1.json packs_index_only)" = 0 ] || fail "--read-data left packs unread"
[ "$(jget v1.json chunks)" -gt 0 ] || fail "--read-data read no chunk"
run "$NBDVAULT" verify --repo "$repo" --read-data-subset 50% >/dev/null
expect_fail 2 "bad --read-data-subset" "$NBDVAULT" verify --repo "$repo" --read-data-subset 150%
# A point served from the bucket alone.
"$NBDVAULT" serve --repo "$repo" --socket "$testdir/srv.sock" &
srv=$!
cleanup_fn kill $srv
for _ in $(seq 50); do [ -S srv.sock ] && break; sleep 0.1; done
nbdcopy "nbd+unix:///vm1@$(jget p2.json point)?socket=$testdir/srv.sock" served.raw
cmp served.raw ref-2.raw || fail "the served point differs"
kill $srv
wait $srv || true

# ---- Errors -------------------------------------------------------------------
secret=$AWS_SECRET_ACCESS_KEY
AWS_SECRET_ACCESS_KEY=wrong$secret expect_fail 1 "403 SignatureDoesNotMatch" \
    "$NBDVAULT" list --repo "$repo"
AWS_SECRET_ACCESS_KEY=wrong$secret expect_fail 1 "403 SignatureDoesNotMatch" \
    "$NBDVAULT" restore --repo "$repo" --disk vm1 --output x.raw
! grep -q "$secret" expect.out expect.err || fail "the secret appears in the output"
[ ! -e x.raw ] || fail "a refused restore wrote its output"
expect_fail 1 "NoSuchBucket" "$NBDVAULT" list --repo "s3://no-such-bucket-$RANDOM/x"
expect_fail 1 "is not a repository" "$NBDVAULT" list --repo "s3://$bucket/elsewhere"
expect_fail 1 "no S3 credentials" env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY \
    HOME=$testdir "$NBDVAULT" list --repo "$repo"
# A damaged manifest is named, on a machine that has not imported it yet.
m=$(grep '^nightly/points/' keys | sed -n 1p)
s3_get "$bucket" "$m" man
"$PYTHON" -c 'import sys; b=bytearray(open("man","rb").read()); b[len(b)//2]^=1; open("man","wb").write(b)'
s3_put "$bucket" "$m" man
XDG_CACHE_HOME=$testdir/third expect_fail 1 "manifest s3://$bucket/$m is damaged" \
    "$NBDVAULT" list --repo "$repo"
# A truncated pack: found by its size, without reading data; named.
p=$(grep '^nightly/packs/' keys | sed -n 1p)
s3_get "$bucket" "$p" pk
head -c 1000 pk > pk.short
s3_put "$bucket" "$p" pk.short
rc=0
XDG_CACHE_HOME=$testdir/host-a "$NBDVAULT" verify --repo "$repo" > v2.out || rc=$?
cat v2.out
[ $rc = 1 ] || fail "verify of a truncated pack exited $rc"
grep -q "${p#nightly/packs/}: 1000 bytes in the store" v2.out || fail "the truncated pack is not named"
s3_put "$bucket" "$p" pk
# One byte of a pack's index (the default verify reads it) and one byte of
# another pack's data (only --read-data reads it), each found and named.
p2=$(grep '^nightly/packs/' keys | sed -n 2p)
s3_get "$bucket" "$p2" pk2
cp pk pk.bad
cp pk2 pk2.bad
"$PYTHON" - pk.bad pk2.bad <<'EOF'
import sys
b = bytearray(open(sys.argv[1], "rb").read()); b[len(b) - 24 - 56 + 40] ^= 1
open(sys.argv[1], "wb").write(b)
b = bytearray(open(sys.argv[2], "rb").read()); b[16 + 56 + 100] ^= 1
open(sys.argv[2], "wb").write(b)
EOF
s3_put "$bucket" "$p" pk.bad
s3_put "$bucket" "$p2" pk2.bad
rc=0
XDG_CACHE_HOME=$testdir/host-a "$NBDVAULT" verify --repo "$repo" --json > v3.json || rc=$?
[ $rc = 1 ] || fail "verify of a damaged index exited $rc"
grep -q "${p#nightly/packs/}: index CRC mismatch" v3.json || fail "the damaged index is not named"
[ "$(jget v3.json damaged_packs)" = 1 ] || fail "verify without --read-data did not find one damaged pack"
"$PYTHON" -c 'import json,sys; sys.exit(not json.load(open("v3.json"))["affected_points"])' ||
    fail "the points of the damaged index are not named"
rc=0
XDG_CACHE_HOME=$testdir/host-a "$NBDVAULT" verify --repo "$repo" --read-data > v4.out || rc=$?
cat v4.out
[ $rc = 1 ] || fail "verify --read-data of damaged packs exited $rc"
grep -q "DAMAGE: 2 pack(s)" v4.out || fail "--read-data did not find both damaged packs"
grep -q "${p2#nightly/packs/}" v4.out || fail "the pack with a damaged chunk is not named"
echo OK
