#!/bin/bash
# Scale and chains (issue 13's cases), each measured in this run:
#   - a chain of CHAIN (300) nightly points of a 1 GiB disk, 20 new 64 KiB
#     writes a night (the bitmap cleared after each backup): the catalog
#     against the repository, a restore of the newest point against the same
#     bytes from a 1-point chain, `prune --keep-last 7` of the chain, and a
#     nightly prune of one point;
#   - a 1 TiB export (nbdkit sparse-random size=1T percent=0.5, random
#     content): the block
#     status plan, the full backup and its rate against the 4 GiB disk's,
#     the peak RSS of backup, restore (to an NBD export that discards) and
#     serve (nbdcopy of the served point);
#   - the same 1 TiB of data copied into a qcow2 behind qemu-nbd: the plan
#     where the server answers block status fast, and NIGHTS (30) nightly
#     incrementals of 32 MiB of new random data each: the catalog against
#     the repository;
#   - the full backup of the 4 GiB reference disk pinned to 1 CPU and to 2.
# Writes its section into docs/BENCHMARKS.md.
#
#   scripts/bench-scale.sh        (make bench runs it)
#   BENCH_CHAIN=100 scripts/bench-scale.sh
set -euo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
BENCH_DIR=${BENCH_DIR:-/var/tmp/nbdvault-bench}
OUT_MD=${BENCH_OUT:-docs/BENCHMARKS.md}
CHAIN=${BENCH_CHAIN:-300}
NIGHTS=${BENCH_NIGHTS:-30}
GiB=$((1024 * 1024 * 1024))
MiB=$((1024 * 1024))
PY=/usr/bin/python3
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$BENCH_DIR"
work=$(mktemp -d "$BENCH_DIR/scale.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || :; done
    wait 2>/dev/null || :
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '%s\n' "$*" >&2; }
now() { date +%s.%N; }
secs() { local s; s=$(now); "$@" > /dev/null; echo "$(now) - $s" | bc -l; }
rss_mib() {    # rss_mib CMD...: the command's peak RSS
    /usr/bin/time -f '%M' -o "$work/rss" "$@" > /dev/null 2>&1
    echo $(( $(tail -n 1 "$work/rss") / 1024 ))
}
jget() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
ok() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "yes"; else echo "**no**"; fi; }

. "$here/bench-disk.sh"

# ---- A chain of nightly points -----------------------------------------------------

log "bench-scale: a chain of $CHAIN points"
img=$work/chain.qcow2
repo=$work/chain-repo
qemu-img create -q -f qcow2 "$img" $((1 * GiB))
head -c $((256 * MiB)) /dev/urandom > "$work/seed.bin"
qemu-io -f qcow2 -c "write -s $work/seed.bin 0 $((256 * MiB))" "$img" > /dev/null
rm -f "$work/seed.bin"
qemu-img bitmap --add "$img" b0
night() {   # night N: back up, clear the bitmap, write 20 granules
    qemu-nbd --fork --pid-file="$work/c.pid" -k "$work/c.sock" -t -r -f qcow2 --shared=8 -B b0 "$img"
    "$NBDVAULT" backup "nbd+unix:///?socket=$work/c.sock" --repo "$repo" --disk c --bitmap b0 > /dev/null
    kill "$(cat "$work/c.pid")"
    while [ -e "$work/c.sock" ] && kill -0 "$(cat "$work/c.pid")" 2>/dev/null; do sleep 0.01; done
    qemu-img bitmap --clear "$img" b0
    $PY - "$img" "$1" <<'PY'
import random, subprocess, sys
random.seed(int(sys.argv[2]))
cmds = []
for c in random.sample(range(1 << 14), 20):
    cmds += ["-c", "write -P %d %d 65536" % (random.randrange(1, 255), c * 65536)]
subprocess.run(["qemu-io", "-f", "qcow2"] + cmds + [sys.argv[1]], check=True, stdout=subprocess.DEVNULL)
PY
}
t0=$(now)
for n in $(seq "$CHAIN"); do night "$n"; done
night $((CHAIN + 1))
t_chain=$(echo "$(now) - $t0" | bc -l)
points=$((CHAIN + 1))
chain_cat=$(( $(stat -c %s "$repo/catalog.db") + $(stat -c %s "$repo/catalog.db-wal" 2>/dev/null || echo 0) ))
chain_repo=$(du -sb "$repo" | cut -f1)
sync
t_restore_chain=$(secs "$NBDVAULT" restore --repo "$repo" --disk c --output "$work/r.raw")
# The same bytes from a 1-point chain.
qemu-nbd --fork --pid-file="$work/c.pid" -k "$work/c.sock" -t -r -f qcow2 --shared=8 "$img"
"$NBDVAULT" backup "nbd+unix:///?socket=$work/c.sock" --repo "$work/one" --disk c > /dev/null
kill "$(cat "$work/c.pid")"
rm -f "$work/r.raw"
sync
t_restore_one=$(secs "$NBDVAULT" restore --repo "$work/one" --disk c --output "$work/r.raw")
rm -f "$work/r.raw"
cp -a "$repo" "$work/chain-copy"
t_prune=$(secs "$NBDVAULT" prune --repo "$repo" --disk c --keep-last 7)
t_prune_one=$(secs "$NBDVAULT" prune --repo "$work/chain-copy" --disk c --keep-last $((points - 1)))

# ---- 1 TiB --------------------------------------------------------------------------

log "bench-scale: 1 TiB"
nbdkit -U "$work/tib.sock" -P "$work/tib.pid" sparse-random size=1T percent=0.5 seed=1 random-content=true
pids+=("$(cat "$work/tib.pid")")
tib="nbd+unix:///?socket=$work/tib.sock"
# The server's own time to answer block status for the whole disk.
t_tib_map=$(secs nbdinfo --map "$tib")
/usr/bin/time -f '%M' -o "$work/rss" "$NBDVAULT" backup "$tib" --repo "$work/tib-repo" --disk t --json \
    > "$work/tib.json"
rss_tib_backup=$(( $(tail -n 1 "$work/rss") / 1024 ))
t_tib=$(jget "$work/tib.json" seconds)
t_tib_plan=$(jget "$work/tib.json" plan_seconds)
tib_read=$(jget "$work/tib.json" bytes_read)
nbdkit -U "$work/null.sock" -P "$work/null.pid" null size=1T
pids+=("$(cat "$work/null.pid")")
rss_tib_restore=$(rss_mib "$NBDVAULT" restore --repo "$work/tib-repo" --disk t \
    --to "nbd+unix:///?socket=$work/null.sock")
"$NBDVAULT" serve --repo "$work/tib-repo" --socket "$work/vault.sock" 2> /dev/null &
vault=$!
pids+=("$vault")
for _ in $(seq 100); do [ -S "$work/vault.sock" ] && break; sleep 0.05; done
nbdcopy "nbd+unix:///t?socket=$work/vault.sock" null:
rss_tib_serve=$(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$vault/status")
kill "$vault"
tib_cat=$(( $(stat -c %s "$work/tib-repo/catalog.db") + $(stat -c %s "$work/tib-repo/catalog.db-wal" 2>/dev/null || echo 0) ))
tib_repo=$(du -sb "$work/tib-repo" | cut -f1)
rm -rf "$work/tib-repo"

# The same data as a qcow2 behind qemu-nbd, whose block status is fast
# (qcow2's tables, where sparse-random computes its extents): the plan is
# nbdvault's own time.  Then NIGHTS nights of 32 new 1 MiB writes of random
# bytes each (the bitmap cleared after each backup): the catalog of the
# nightly points against the repository.
log "bench-scale: 1 TiB qcow2, $NIGHTS nights"
timg=$work/tib.qcow2
qemu-img create -q -f qcow2 "$timg" 1T
qemu-nbd --fork --pid-file="$work/tq.pid" -k "$work/tq.sock" -t -f qcow2 "$timg"
nbdcopy --destination-is-zero "$tib" "nbd+unix:///?socket=$work/tq.sock"
kill "$(cat "$work/tq.pid")"
while kill -0 "$(cat "$work/tq.pid")" 2>/dev/null; do sleep 0.05; done
kill "$(cat "$work/tib.pid")"
qemu-img bitmap --add "$timg" b0
tq="nbd+unix:///?socket=$work/tq.sock"
tib_night() {   # tib_night N: back up (full for night 0), clear the bitmap, write
    qemu-nbd --fork --pid-file="$work/tq.pid" -k "$work/tq.sock" -t -r -f qcow2 --shared=8 -B b0 "$timg"
    if [ "$1" = 0 ]; then
        t_tibq_map=$(secs nbdinfo --map "$tq")
        "$NBDVAULT" backup "$tq" --repo "$work/tibq-repo" --disk t --json > "$work/tibq.json"
    else
        "$NBDVAULT" backup "$tq" --repo "$work/tibq-repo" --disk t --bitmap b0 > /dev/null
    fi
    kill "$(cat "$work/tq.pid")"
    while kill -0 "$(cat "$work/tq.pid")" 2>/dev/null; do sleep 0.01; done
    qemu-img bitmap --clear "$timg" b0
    $PY - "$timg" "$1" "$work" <<'PY'
import os, random, subprocess, sys
random.seed(1000 + int(sys.argv[2]))
cmds, files = [], []
for k, c in enumerate(random.sample(range(1 << 20), 32)):   # 1 MiB cells of 1 TiB
    f = os.path.join(sys.argv[3], "w%d.bin" % k)
    with open(f, "wb") as o:
        o.write(os.urandom(1 << 20))
    files.append(f)
    cmds += ["-c", "write -s %s %d 1M" % (f, c << 20)]
subprocess.run(["qemu-io", "-f", "qcow2"] + cmds + [sys.argv[1]], check=True, stdout=subprocess.DEVNULL)
for f in files:
    os.remove(f)
PY
}
for n in $(seq 0 "$NIGHTS"); do tib_night "$n"; done
t_tibq_plan=$(jget "$work/tibq.json" plan_seconds)
tibq_cat=$(( $(stat -c %s "$work/tibq-repo/catalog.db") + $(stat -c %s "$work/tibq-repo/catalog.db-wal" 2>/dev/null || echo 0) ))
tibq_repo=$(du -sb "$work/tibq-repo" | cut -f1)
tibq_points=$("$NBDVAULT" list --repo "$work/tibq-repo" --json | $PY -c 'import json,sys; print(len(json.load(sys.stdin)))')
rm -rf "$work/tibq-repo" "$timg"

# ---- 1 CPU and 2 -------------------------------------------------------------------

log "bench-scale: 1 CPU and 2"
disk=$BENCH_DIR/disk-4g.qcow2
[ -f "$disk.before" ] || make_disk "$disk" $((4 * GiB))
serve "$disk.before" "$work/before.sock"
before="nbd+unix:///?socket=$work/before.sock"
sync
t_cpu1=$(secs taskset -c 0 "$NBDVAULT" backup "$before" --repo "$work/cpu1" --disk d)
rm -rf "$work/cpu1"
sync
t_cpu2=$(secs "$NBDVAULT" backup "$before" --repo "$work/cpu2" --disk d)
data4=$(du -sb "$work/cpu2/packs" | cut -f1)
rm -rf "$work/cpu2"

# ---- Report -----------------------------------------------------------------------

cpu=$(awk -F: '/model name/ { sub(/^ */, "", $2); print $2; exit }' /proc/cpuinfo)
row() { printf '| %s | %s | %s | %s |\n' "$@"; }
{
    echo "## Scale and chains"
    echo
    echo "Written by \`scripts/bench-scale.sh\` on $(date -u +%Y-%m-%d): $(nproc) CPUs ($cpu),"
    echo "kernel $(uname -r), one run of each."
    echo
    echo "| measure | value | against | target |"
    echo "|---|---|---|---|"
    row "chain: $points nightly points of a 1 GiB disk (s, all)" "$t_chain" "" ""
    row "chain: catalog / repository (bytes)" "$chain_cat / $chain_repo" \
        "$(echo "scale=2; 100 * $chain_cat / $chain_repo" | bc -l)%" "< 1%: $(ok "$chain_cat * 100 < $chain_repo")"
    row "chain: restore of the newest point (s)" "$t_restore_chain" "1-point chain: $t_restore_one" \
        "<= 1.2x: $(ok "$t_restore_chain <= 1.2 * $t_restore_one") ($(ratio "$t_restore_chain" "$t_restore_one")x)"
    row "prune --keep-last 7 of $points points (s)" "$t_prune" "" "<= 2 s: $(ok "$t_prune <= 2")"
    row "a nightly prune of one point (s)" "$t_prune_one" "" "< 0.1 s: $(ok "$t_prune_one < 0.1")"
    row "1 TiB (sparse-random 0.5%, random content): plan (s)" "$t_tib_plan" "nbdinfo --map of it: $t_tib_map" \
        "< 2 s: $(ok "$t_tib_plan < 2")"
    row "1 TiB: full backup (s), data read" "$t_tib, $((tib_read / MiB)) MiB" \
        "$(echo "scale=0; $tib_read / $MiB / $t_tib" | bc -l) MiB/s; 4 GiB disk on 2 CPUs: $(echo "scale=0; 2048 / $t_cpu2" | bc -l) MiB/s of data" ""
    row "1 TiB: peak RSS backup / restore / serve (MiB)" "$rss_tib_backup / $rss_tib_restore / $rss_tib_serve" "" \
        "<= 64: $(ok "$rss_tib_backup <= 64 && $rss_tib_restore <= 64 && $rss_tib_serve <= 64")"
    row "1 TiB: catalog / repository, one point (bytes)" "$tib_cat / $tib_repo" \
        "$(echo "scale=2; 100 * $tib_cat / $tib_repo" | bc -l)%" ""
    row "1 TiB, the same data in a qcow2 behind qemu-nbd: plan (s)" "$t_tibq_plan" "nbdinfo --map of it: $t_tibq_map" \
        "< 2 s: $(ok "$t_tibq_plan < 2")"
    row "1 TiB qcow2: catalog / repository, $tibq_points nightly points (bytes)" "$tibq_cat / $tibq_repo" \
        "$(echo "scale=2; 100 * $tibq_cat / $tibq_repo" | bc -l)%" "< 1%: $(ok "$tibq_cat * 100 < $tibq_repo")"
    row "4 GiB full backup, 1 CPU / 2 CPUs (s)" "$t_cpu1 / $t_cpu2" "$(ratio "$t_cpu1" "$t_cpu2")x from the second CPU" ""
} > "$work/scale.md"
cat "$work/scale.md"
put_section "$OUT_MD" "$work/scale.md"
