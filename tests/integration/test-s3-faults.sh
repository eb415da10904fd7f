#!/bin/bash
# requires: rgw
# Faults between nbdvault and the bucket, injected by a proxy of our own
# (s3proxy.py) in front of Ceph RGW: 503 with Retry-After on 10% of the
# requests (the backup succeeds and reports its retries), 429 SlowDown on
# 50% with few retries (a success that restores right, or a clean failure
# naming the status that records nothing; the rerun succeeds), 503 always
# (a clean failure by the deadline, nothing recorded), a PUT reset mid-body
# and a GET stalled past the low-speed limit (retried, the data right), one
# flipped byte in a GET body (caught, named, read again: the restore holds),
# the same byte flipped in every GET (caught and named, exit 1, nothing
# wrong written as if it were right).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/s3-lib.sh"
requires qemu-nbd --version

M=1048576
bucket=$(s3_bucket faults)
repo=s3://$bucket/r
upstream=${AWS_ENDPOINT_URL##*:}
head -c $((20 * M)) /dev/urandom > data.raw
start_qemu_nbd d.sock -t -r -f raw -x d --shared=8 data.raw
uri="nbd+unix:///d?socket=$testdir/d.sock"
run "$NBDVAULT" init --repo "$repo"

# proxy ARGS...: a fresh proxy; points AWS_ENDPOINT_URL at it for the
# commands run with "via".
proxy_pid=
proxy ()
{
    [ -z "$proxy_pid" ] || { kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; }
    port=$(free_port)
    "$PYTHON" "$here/s3proxy.py" "$port" "$upstream" --log proxy.log "$@" > proxy.out 2>&1 &
    proxy_pid=$!
    cleanup_fn kill "$proxy_pid"
    for _ in $(seq 50); do grep -q listening proxy.out && return 0; sleep 0.1; done
    fail "the proxy did not start"
}
via () { AWS_ENDPOINT_URL=http://127.0.0.1:$port "$@"; }
npoints () { "$NBDVAULT" list --repo "$repo" --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))'; }

# 10% 503 with Retry-After: retried, the backup succeeds and says so.
proxy --error-rate 10 --status 503 --retry-after 1 --seed 3
via backup_json b1.json "$uri" --repo "$repo" --disk d > /dev/null
[ "$(jget b1.json retries)" -ge 1 ] || fail "no retry reported under 10% 503s"
grep -q "injected" proxy.log || fail "the proxy injected nothing"
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw
cmp r.raw data.raw || fail "the point backed up through 503s differs"

# 503 on every request: a clean failure within the retries, nothing recorded.
before=$(npoints)
proxy --error-rate 100 --status 503
NBDVAULT_S3_RETRIES=2 via expect_fail 1 "503 ServiceUnavailable" \
    "$NBDVAULT" backup "$uri" --repo "$repo" --disk d --full
[ "$(npoints)" = "$before" ] || fail "a failed backup recorded a point"

# 50% 429 SlowDown with one retry: either outcome, but a clean one.
head -c $((4 * M)) /dev/urandom | dd of=data.raw bs=1M seek=3 conv=notrunc status=none
proxy --error-rate 50 --status 429 --code SlowDown --seed 7
rc=0
NBDVAULT_S3_RETRIES=1 via "$NBDVAULT" backup "$uri" --repo "$repo" --disk d --full --json \
    > b2.json 2> b2.err || rc=$?
if [ $rc = 0 ]; then
    [ "$(npoints)" = $((before + 1)) ] || fail "a backup that succeeded did not record its point"
else
    [ $rc = 1 ] || fail "exit $rc under 429s"
    grep -Eq "429 (SlowDown|TooManyRequests)" b2.err || { cat b2.err; fail "the failure does not name the 429"; }
    [ "$(npoints)" = "$before" ] || fail "a failed backup recorded a point"
    # The rerun, straight to the bucket, succeeds.
    run "$NBDVAULT" backup "$uri" --repo "$repo" --disk d --full >/dev/null
fi
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw
cmp r.raw data.raw || fail "the newest point differs after the 429s"

# A PUT reset mid-body: retried.
head -c $((2 * M)) /dev/urandom | dd of=data.raw bs=1M seek=10 conv=notrunc status=none
proxy --reset-put
via backup_json b3.json "$uri" --repo "$repo" --disk d --full > /dev/null
grep -q "reset mid-body" proxy.log || fail "no PUT was reset"
[ "$(jget b3.json retries)" -ge 1 ] || fail "the reset PUT was not retried"
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw
cmp r.raw data.raw || fail "the point written through a reset differs"

# A GET stalled past the low-speed limit: retried, the restore right.
proxy --stall-get 30
NBDVAULT_S3_LOW_SPEED_TIME=2 via run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw \
    --json > r1.json
grep -q "stalled" proxy.log || fail "no GET was stalled"
[ "$(jget r1.json retries)" -ge 1 ] || fail "the stalled GET was not retried"
cmp r.raw data.raw || fail "the restore through a stall differs"

# One flipped byte in a GET body: caught, named, read again from the
# bucket (not from the reader's windows): the restore holds.  A repository
# of its own, backed up without faults: one pack, every chunk of it read,
# its first chunk (where the proxy flips a byte) among them.
repo2=s3://$bucket/flip
run "$NBDVAULT" init --repo "$repo2"
run "$NBDVAULT" backup "$uri" --repo "$repo2" --disk d
proxy --flip-get
rm -f r.raw
via run "$NBDVAULT" restore --repo "$repo2" --disk d --output r.raw 2> flip.err ||
    { cat flip.err; fail "the restore through one flipped byte failed"; }
cat flip.err
grep -q "flipped" proxy.log || fail "no byte was flipped"
grep -Eq "pack .*(crc|CRC|seal|damaged|checksum).*reading it again" flip.err ||
    fail "the flipped byte was not named"
cmp r.raw data.raw || fail "the restore through a flipped byte differs"
# The same byte flipped in every GET (a damaged pack, as far as the client
# can tell): caught, named, exit 1.
proxy --flip-get-all
rm -f r.raw
via expect_fail 1 "pack .*(crc|CRC|damaged|checksum)" \
    "$NBDVAULT" restore --repo "$repo2" --disk d --output r.raw
[ "$(grep -c "flipped" proxy.log)" -ge 3 ] || fail "the byte was not flipped in the GET read again"
run "$NBDVAULT" verify --repo "$repo"
echo OK
