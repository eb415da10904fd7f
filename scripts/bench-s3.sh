#!/bin/bash
# Benchmarks a repository in a bucket against restic on the same Ceph RGW
# and the same reference disk as scripts/bench.sh: a full backup, the ~1%
# scattered incremental (restic reads the whole disk again and dedups it),
# and a restore of the newest point from the bucket.  The full backups are
# the median of 3 (each tool into a new repository of its own, `sync`
# before each: the two cores are shared with the RGW and its OSD, and one
# run moves by 10%), the rest one run of each; writes its section into
# docs/BENCHMARKS.md.
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
export RGW_DIR=$work/rgw RGW_MEMSTORE_BYTES=$((16 * GiB)) RGW_OBJECTSTORE=${RGW_OBJECTSTORE:-bluestore}
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

# measure VAR CMD...: VAR_s (wall seconds), VAR_cpu (user + system
# seconds of CMD and its children), VAR_rss (the peak RSS of the largest
# process, KiB), VAR_req and VAR_put (RGW's count of requests and of
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
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.3f %.2f %d" % (time.monotonic() - t, u.ru_utime + u.ru_stime, u.ru_maxrss))
sys.exit(rc)' "$@")
    read -r r1 p1 < <(rgw_count)
    read -r "${var}_s" "${var}_cpu" "${var}_rss" <<< "$out"
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
# The first of each tool's three full backups goes on to the incremental
# and the restore; the other two land in repositories of their own.
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
fulls=() rfulls=()
for i in 1 2 3; do
    log "bench-s3: full backup $i of 3"
    r=$repo rr=$rrepo
    if [ "$i" -gt 1 ]; then
        r=$repo-$i rr=$rrepo-$i
        "$NBDVAULT" init --repo "$r" >/dev/null
        restic -q -r "$rr" init >/dev/null
    fi
    sync
    measure f "$NBDVAULT" backup "$before" --repo "$r" --disk d
    [ "$i" -gt 1 ] || { full_rss=$f_rss full_req=$f_req full_put=$f_put full_cpu=$f_cpu; }
    fulls+=("$f_s")
    sync
    measure f bash -c "nbdcopy '$before' - | restic -q -r '$rr' backup --stdin --stdin-filename d.raw"
    [ "$i" -gt 1 ] || { rfull_rss=$f_rss rfull_req=$f_req rfull_put=$f_put rfull_cpu=$f_cpu; }
    rfulls+=("$f_s")
done
full_s=$(median3 "${fulls[@]}")
rfull_s=$(median3 "${rfulls[@]}")

# The same once more with the object store on a CPU of its own, as a real
# one is on other machines: the RGW, its OSD and its monitor pinned to the
# last CPU, each tool to the others (on 2 vCPUs: one CPU each side).
pin_store() {   # pin_store CPULIST
    local p
    for p in $(pgrep -f "(ceph-mon|ceph-osd|radosgw) -c $RGW_DIR/"); do
        taskset -a -p -c "$1" "$p" >/dev/null
    done
}
ncpu=$(nproc)
if [ "$ncpu" -ge 2 ]; then
    log "bench-s3: full backup, the object store on CPU $((ncpu - 1))"
    tools=0-$((ncpu - 2))
    [ "$ncpu" -gt 2 ] || tools=0
    pin_store $((ncpu - 1))
    "$NBDVAULT" init --repo "$repo-pinned" >/dev/null
    restic -q -r "$rrepo-pinned" init >/dev/null
    sync
    measure pin taskset -c "$tools" "$NBDVAULT" backup "$before" --repo "$repo-pinned" --disk d
    sync
    measure rpin taskset -c "$tools" bash -c "nbdcopy '$before' - | restic -q -r '$rrepo-pinned' backup --stdin --stdin-filename d.raw"
    pin_store 0-$((ncpu - 1))
fi
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
    echo "of each but the full backups (median of 3, \`sync\` before each), restic $(restic version | awk '{ print $2 }') and nbdvault on the same Ceph RGW"
    echo "($RGW_OBJECTSTORE OSD, 127.0.0.1) and the same 4 GiB disk as above; restic reads the disk"
    echo "through \`nbdcopy ... - | restic backup --stdin\`, its incremental the whole disk"
    echo "again (it has no dirty bitmap); the restore of the newest point starts from an empty"
    echo "cache (nbdvault) and is synced to disk (restic dump)."
    echo
    echo "| measure | nbdvault | restic | ratio |"
    echo "|---|---|---|---|"
    row "full backup (s, median of 3: ${fulls[*]} / ${rfulls[*]})" "$full_s" "$rfull_s" "$(ratio "$rfull_s" "$full_s")x faster"
    row "full backup: CPU seconds of the command (first run)" "$full_cpu" "$rfull_cpu" "$(ratio "$rfull_cpu" "$full_cpu")x less"
    [ "$ncpu" -lt 2 ] ||
        row "full backup, the object store on CPU $((ncpu - 1)) and the tool on CPU $tools (s)" "$pin_s" "$rpin_s" "$(ratio "$rpin_s" "$pin_s")x faster"
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
