#!/bin/bash
# Benchmarks a repository in a bucket against restic on the same Ceph RGW
# and the same reference disk as scripts/bench.sh: a full backup, the ~1%
# scattered incremental (restic reads the whole disk again and dedups it),
# and a restore of the newest point from the bucket.  One run of each
# (they take minutes); writes its section into docs/BENCHMARKS.md.
#
#   scripts/bench-s3.sh              (make bench runs it after bench.sh)
#   BENCH_DIR=/var/tmp/nbdvault-bench BENCH_OUT=/tmp/x.md scripts/bench-s3.sh
set -euo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
BENCH_DIR=${BENCH_DIR:-/var/tmp/nbdvault-bench}
OUT_MD=${BENCH_OUT:-docs/BENCHMARKS.md}
GiB=$((1024 * 1024 * 1024))
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$BENCH_DIR"
work=$(mktemp -d "$BENCH_DIR/s3.XXXXXX")
pids=()
# The OSD on a file with direct I/O, as on a disk (rgw-test.sh: a memstore
# OSD spent 6 of the 24 CPU-seconds of a full backup taking fresh pages).
export RGW_DIR=$work/rgw RGW_MEMSTORE_BYTES=$((10 * GiB)) RGW_OBJECTSTORE=${RGW_OBJECTSTORE:-bluestore}
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || :; done
    "$here/rgw-test.sh" stop 2>/dev/null || :
    wait 2>/dev/null || :
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '%s\n' "$*" >&2; }

. "$here/bench-disk.sh"
disk=$BENCH_DIR/disk-4g.qcow2
[ -f "$disk" ] && [ -f "$disk.before" ] || make_disk "$disk" $((4 * GiB))
serve "$disk" "$work/src.sock" -B b0
src="nbd+unix:///?socket=$work/src.sock"
serve "$disk.before" "$work/before.sock"
before="nbd+unix:///?socket=$work/before.sock"

"$here/rgw-test.sh" start
eval "$("$here/rgw-test.sh" env)"
export XDG_CACHE_HOME=$work/cache RESTIC_PASSWORD=bench AWS_DEFAULT_REGION=us-east-1
curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" -u "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    -X PUT "$AWS_ENDPOINT_URL/bench" >/dev/null
repo=s3://bench/nbdvault
rrepo=s3:$AWS_ENDPOINT_URL/bench/restic
"$NBDVAULT" init --repo "$repo" >/dev/null
restic -q -r "$rrepo" init >/dev/null

# measure VAR CMD...: VAR_s (wall seconds), VAR_rss (the peak RSS of the
# largest process, KiB), VAR_req and VAR_put (RGW's count of requests and of
# PUTs while it ran, from its admin socket).
rgw_count() {
    ceph --admin-daemon "$RGW_DIR/run/client.rgw.a.asok" perf dump |
        /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin)["rgw"]; print(d["req"], d["put"])'
}
measure() {
    local var=$1 out r0 p0 r1 p1; shift
    read -r r0 p0 < <(rgw_count)
    out=$(/usr/bin/python3 -c '
import resource, subprocess, sys, time
t = time.monotonic()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print("%.3f %d" % (time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)' "$@")
    read -r r1 p1 < <(rgw_count)
    printf -v "${var}_s" '%s' "${out% *}"
    printf -v "${var}_rss" '%s' "${out#* }"
    printf -v "${var}_req" '%s' "$((r1 - r0))"
    printf -v "${var}_put" '%s' "$((p1 - p0))"
}
bucket_bytes() {   # bucket_bytes PREFIX
    curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" -u "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
        "$AWS_ENDPOINT_URL/bench?list-type=2&prefix=${1//\//%2F}" |
        /usr/bin/python3 -c 'import re,sys; print(sum(int(x) for x in re.findall(r"<Size>(\d+)</Size>", sys.stdin.read())))'
}
ratio() { echo "scale=2; $1 / $2" | bc -l; }

npacks() {
    curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" -u "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
        "$AWS_ENDPOINT_URL/bench?list-type=2&prefix=nbdvault%2Fpacks%2F" | grep -o "<Key>" | wc -l
}

# Neither tool's run pays for the export's first reads (a fresh qemu-nbd
# faults in its buffers; a VM's QEMU has long done so).
nbdcopy "$before" null:
log "bench-s3: full backup"
measure full "$NBDVAULT" backup "$before" --repo "$repo" --disk d
measure rfull bash -c "nbdcopy '$before' - | restic -q -r '$rrepo' backup --stdin --stdin-filename d.raw"
full_bytes=$(bucket_bytes nbdvault/)
rfull_bytes=$(bucket_bytes restic/)
packs0=$(npacks)
log "bench-s3: incremental"
measure incr "$NBDVAULT" backup "$src" --repo "$repo" --disk d --bitmap b0
measure rincr bash -c "nbdcopy '$src' - | restic -q -r '$rrepo' backup --stdin --stdin-filename d.raw"
incr_bytes=$(( $(bucket_bytes nbdvault/) - full_bytes ))
rincr_bytes=$(( $(bucket_bytes restic/) - rfull_bytes ))
incr_packs=$(( $(npacks) - packs0 ))
log "bench-s3: restore"
rm -rf "$work/cache"          # from the bucket alone, as on a new machine
measure restore "$NBDVAULT" restore --repo "$repo" --disk d --output "$work/out.raw"
rm -f "$work/out.raw"
measure rrestore bash -c "restic -q -r '$rrepo' dump latest d.raw > '$work/out.raw' && sync '$work/out.raw'"
rm -f "$work/out.raw"

cpu=$(awk -F: '/model name/ { sub(/^ */, "", $2); print $2; exit }' /proc/cpuinfo)
row() { printf '| %s | %s | %s | %s |\n' "$@"; }
{
    echo "## Object storage: a repository in a bucket against restic"
    echo
    echo "Written by \`scripts/bench-s3.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores ($cpu), one run"
    echo "of each, restic $(restic version | awk '{ print $2 }') and nbdvault on the same Ceph RGW"
    echo "($RGW_OBJECTSTORE OSD, 127.0.0.1) and the same 4 GiB disk as above; restic reads the disk"
    echo "through \`nbdcopy ... - | restic backup --stdin\`, its incremental the whole disk"
    echo "again (it has no dirty bitmap); the restore of the newest point starts from an empty"
    echo "cache (nbdvault) and is synced to disk (restic dump)."
    echo
    echo "| measure | nbdvault | restic | ratio |"
    echo "|---|---|---|---|"
    row "full backup (s)" "$full_s" "$rfull_s" "$(ratio "$rfull_s" "$full_s")x faster"
    row "full backup in the bucket (bytes)" "$full_bytes" "$rfull_bytes" "$(ratio "$full_bytes" "$rfull_bytes")x the size"
    row "full backup: requests (PUTs)" "$full_req ($full_put)" "$rfull_req ($rfull_put)" "$(ratio "$full_req" "$rfull_req")x the requests"
    row "full backup: peak RSS (MiB)" "$((full_rss / 1024))" "$((rfull_rss / 1024))" "$(ratio "$full_rss" "$rfull_rss")x"
    row "incremental (s)" "$incr_s" "$rincr_s" "$(ratio "$rincr_s" "$incr_s")x faster"
    row "incremental in the bucket (bytes)" "$incr_bytes" "$rincr_bytes" "$(ratio "$incr_bytes" "$rincr_bytes")x the size"
    row "incremental: requests (PUTs)" "$incr_req ($incr_put)" "$rincr_req ($rincr_put)" "$(ratio "$incr_req" "$rincr_req")x the requests"
    row "incremental: PUTs against its new packs" "$incr_put against $incr_packs packs" "" "target: packs + 2"
    row "incremental: peak RSS (MiB)" "$((incr_rss / 1024))" "$((rincr_rss / 1024))" "$(ratio "$incr_rss" "$rincr_rss")x"
    row "restore of the newest point (s)" "$restore_s" "$rrestore_s" "$(ratio "$rrestore_s" "$restore_s")x faster"
    row "restore: requests" "$restore_req" "$rrestore_req" "$(ratio "$restore_req" "$rrestore_req")x the requests"
    row "restore: peak RSS (MiB)" "$((restore_rss / 1024))" "$((rrestore_rss / 1024))" "$(ratio "$restore_rss" "$rrestore_rss")x"
} > "$work/s3.md"
cat "$work/s3.md"
put_section "$OUT_MD" "$work/s3.md"
