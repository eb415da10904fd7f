#!/bin/bash
# Benchmarks nbdvault against what a user would run instead, in the same
# run, and writes the table into docs/BENCHMARKS.md.
#
#   scripts/bench.sh            (make bench)
#   BENCH_RUNS=5 BENCH_FAST_RUNS=15 BENCH_DIR=/var/tmp/nbdvault-bench scripts/bench.sh
#
# The reference disk (cached in $BENCH_DIR): a 4 GiB qcow2 holding about
# 1.5 GiB of real files (a tar of /usr), 512 MiB of random data, the rest
# holes, and a persistent bitmap "b0" holding about 1% of the disk as
# scattered 64 KiB granules.  Exported read-only by qemu-nbd --shared=8.
#
# Ratios only: no timing goes into make check.
set -euo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
RUNS=${BENCH_RUNS:-3}
FAST_RUNS=${BENCH_FAST_RUNS:-9}
BENCH_DIR=${BENCH_DIR:-/var/tmp/nbdvault-bench}
OUT_MD=${BENCH_OUT:-docs/BENCHMARKS.md}
PY=/usr/bin/python3
GiB=$((1024 * 1024 * 1024))
MiB=$((1024 * 1024))

mkdir -p "$BENCH_DIR"
work=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || :; done
    wait 2>/dev/null || :
    rm -rf "$work"
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }
cores=$(nproc)
cpu=$(awk -F: '/model name/ { sub(/^ */, "", $2); print $2; exit }' /proc/cpuinfo)
log "bench: $cpu, $cores CPUs, kernel $(uname -r)"

# ---- The reference disks ----------------------------------------------------

. "$(dirname "$0")/bench-disk.sh"

disk=$BENCH_DIR/disk-4g.qcow2
big=$BENCH_DIR/disk-16g.qcow2
[ -f "$disk" ] && [ -f "$disk.before" ] || make_disk "$disk" $((4 * GiB))
if [ ! -f "$big" ]; then
    # The same content in a 4 times larger, sparser disk.
    qemu-img create -q -f qcow2 -b "$disk" -F qcow2 "$big.tmp" $((16 * GiB))
    qemu-img convert -f qcow2 -O qcow2 "$big.tmp" "$big.tmp2"
    rm -f "$big.tmp"
    mv "$big.tmp2" "$big"
fi

# The full backup is taken of the disk as it was before the bitmap's
# writes ($before); the incremental then reads what b0 marks, as a nightly
# run does.

serve "$disk" "$work/src.sock" -B b0
src="nbd+unix:///?socket=$work/src.sock"
serve "$disk.before" "$work/before.sock"
before="nbd+unix:///?socket=$work/before.sock"
serve "$big" "$work/big.sock"
bigsrc="nbd+unix:///?socket=$work/big.sock"

# ---- Timing helpers -----------------------------------------------------------

now() { date +%s.%N; }
# median CMD...: runs CMD $RUNS times (with PREP, if set, before each run,
# untimed) and prints the median wall time in seconds.
median() {
    local t=() i s e
    for i in $(seq "$RUNS"); do
        [ -n "${PREP:-}" ] && eval "$PREP"
        # Every run starts with nothing left to write back from the last.
        sync
        s=$(now)
        "$@" > /dev/null
        e=$(now)
        t+=("$(echo "$e - $s" | bc -l)")
    done
    printf '%s\n' "${t[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}
# pair N PREP_A CMD_A PREP_B CMD_B: runs A and B alternately, N times each
# (each PREP untimed before its run, a sync before every run; the commands
# are shell text) and prints the median wall times of A and of B.  Taking
# turns, both sides see the same drift of this machine's disk.
timed() {
    local s e
    [ -n "$1" ] && eval "$1"
    sync
    s=$(now)
    eval "$2" > /dev/null || { log "bench: failed: $2"; return 1; }
    e=$(now)
    echo "$e - $s" | bc -l
}
med() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
pair() {
    local n=$1 i ta=() tb=()
    for i in $(seq "$n"); do
        ta+=("$(timed "$2" "$3")") || return 1
        tb+=("$(timed "$4" "$5")") || return 1
    done
    echo "$(med "${ta[@]}") $(med "${tb[@]}")"
}
# got VAR...: stops the bench when a pair left a time unset (it failed).
got() { local v; for v in "$@"; do [ -n "${!v:-}" ] || { log "bench: no time for $v"; exit 1; }; done; }
peak_rss_mib() {   # peak_rss_mib CMD...
    /usr/bin/time -f '%M' -o "$work/rss" "$@" > /dev/null 2>&1
    echo $(( $(tail -n 1 "$work/rss") / 1024 ))
}
ratio() { echo "scale=2; $1 / $2" | bc -l; }

# ---- Full backup ------------------------------------------------------------------

log "bench: full backup"
read -r t_nbdcopy_zstd t_full < <(pair "$RUNS" \
    "" "nbdcopy '$before' - | zstd -1 -T2 -q > '$work/pipe.zst'" \
    "rm -rf '$work/repo'" "'$NBDVAULT' backup '$before' --repo '$work/repo' --disk d")
got t_nbdcopy_zstd t_full
t_nbdcopy_null=$(median nbdcopy "$before" null:)
rm -rf "$work/repo"
"$NBDVAULT" backup "$before" --repo "$work/repo" --disk d --json > "$work/full.json"
rss_backup=$(PREP= peak_rss_mib "$NBDVAULT" backup "$before" --repo "$work/rss-repo" --disk d)
rm -rf "$work/rss-repo"
rss_backup_big=$(peak_rss_mib "$NBDVAULT" backup "$bigsrc" --repo "$work/rss-repo" --disk d)
rm -rf "$work/rss-repo"
zstd_size=$(stat -c %s "$work/pipe.zst")
# The floor the full backup is measured against (at most 1.5x of it):
# compressing the disk's data alone, read from memory (no NBD, no zeroes,
# no hashing, nothing stored).
shm=/dev/shm
[ "$(df -k --output=avail "$shm" 2>/dev/null | tail -n 1)" -gt $((3 * 1024 * 1024)) ] 2>/dev/null || shm=$work
data_only=$(mktemp "$shm/nbdvault-bench-data.XXXXXX")
$PY - "$before" "$data_only" <<'PY'
import nbd, sys
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
size, ext, end = h.get_size(), [], [0]
def cb(ctx, start, entries, err):
    o = start
    for i in range(0, len(entries), 2):
        if not entries[i + 1] & 1:          # not a hole
            ext.append((o, entries[i]))
        o += entries[i]
    end[0] = o
    return 0
off = 0
while off < size:
    h.block_status(min(size - off, 2**31), off, cb)
    if end[0] <= off:
        sys.exit("block status made no progress")
    off = end[0]
with open(sys.argv[2], "wb") as out:
    for o, l in ext:
        l = min(l, size - o)
        while l > 0:
            k = min(l, 32 * 2**20)
            out.write(h.pread(k, o))
            o += k
            l -= k
PY
cat "$data_only" > /dev/null
PREP=
t_compress_alone=$(median bash -c "zstd -1 -T2 -q -c '$data_only' > /dev/null")
data_only_bytes=$(stat -c %s "$data_only")
rm -f "$data_only"

# ---- Incremental ---------------------------------------------------------------------

log "bench: incremental"
cat > "$work/walk.py" <<'PY'
# The core of a virtnbdbackup-style incremental: walk the dirty bitmap with
# block status, read only the dirty extents (and write them out when asked).
import nbd, sys
h = nbd.NBD()
h.add_meta_context("qemu:dirty-bitmap:b0")
h.connect_uri(sys.argv[1])
size = h.get_size()
dirty, covered = [], [0]
def cb(ctx, start, entries, err):
    o = start
    for i in range(0, len(entries), 2):
        if entries[i + 1] & 1:
            dirty.append((o, min(entries[i], size - o)))
        o += entries[i]
        if o >= size:
            break
    covered[0] = o - start
    return 0
off = 0
while off < size:
    covered[0] = 0
    h.block_status(min(size - off, 2**32 - 65536), off, cb)
    if covered[0] == 0:
        sys.exit("no progress")
    off += covered[0]
out = open(sys.argv[2], "wb") if len(sys.argv) > 2 else None
total = 0
for o, l in dirty:
    while l > 0:
        k = min(l, 32 * 1024 * 1024)
        b = h.pread(k, o)
        total += len(b)
        if out:
            out.write(b)
        o += k
        l -= k
print(total)
PY
cp -a "$work/repo" "$work/repo-full"
# The packs are immutable: hard links give each run the full point without
# writing 1.2 GB of copies; the catalog is copied.  Runs of a tenth of a
# second move by ±10 ms here: more of them.
read -r t_walk t_incr < <(pair "$FAST_RUNS" "" "$PY '$work/walk.py' '$src'" \
    "rm -rf '$work/repo'; mkdir '$work/repo'; cp -al '$work/repo-full/packs' '$work/repo/packs'; cp '$work/repo-full'/catalog.db* '$work/repo/'" \
    "'$NBDVAULT' backup '$src' --repo '$work/repo' --disk d --bitmap b0")
got t_walk t_incr
rm -rf "$work/repo"
mkdir "$work/repo"
cp -al "$work/repo-full/packs" "$work/repo/packs"
cp "$work/repo-full"/catalog.db* "$work/repo/"
"$NBDVAULT" backup "$src" --repo "$work/repo" --disk d --bitmap b0 --json > "$work/incr.json"
rm -rf "$work/rss-repo"
cp -a "$work/repo-full" "$work/rss-repo"
rss_incr=$(peak_rss_mib "$NBDVAULT" backup "$src" --repo "$work/rss-repo" --disk d --bitmap b0)
rm -rf "$work/rss-repo"
$PY "$work/walk.py" "$src" "$work/dirty.bin" > /dev/null
zstd -1 -q -f "$work/dirty.bin" -o "$work/dirty.zst"
dirty_zstd=$(stat -c %s "$work/dirty.zst")
dirty_bytes=$(stat -c %s "$work/dirty.bin")
rm -f "$work/dirty.bin" "$work/dirty.zst"
jget() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
incr_stored=$(jget "$work/incr.json" bytes_stored)
incr_read=$(jget "$work/incr.json" bytes_read)
full_point=$(jget "$work/full.json" point)
full_stored=$(jget "$work/full.json" bytes_stored)

# ---- Restore ---------------------------------------------------------------------------

log "bench: restore"
# A restore returns once its output is durable (fsync); qemu-img convert
# does not sync, so its run includes a sync of the file it wrote.
read -r t_convert t_restore < <(pair "$RUNS" \
    "rm -f '$work/out.raw'" "qemu-img convert -f qcow2 -O raw '$disk.before' '$work/out.raw' && sync '$work/out.raw'" \
    "rm -f '$work/out.raw'" "'$NBDVAULT' restore --repo '$work/repo' --disk d --point '$full_point' --output '$work/out.raw'")
got t_convert t_restore
rm -f "$work/out.raw"
rss_restore=$(peak_rss_mib "$NBDVAULT" restore --repo "$work/repo" --disk d --point "$full_point" \
    --output "$work/out.raw")
rm -f "$work/out.raw"
# The 16 GiB disk: its full point, restored.
"$NBDVAULT" backup "$bigsrc" --repo "$work/repo-big" --disk big > /dev/null
rss_restore_big=$(peak_rss_mib "$NBDVAULT" restore --repo "$work/repo-big" --disk big --output "$work/out.raw")
rm -f "$work/out.raw"

# ---- Serve -------------------------------------------------------------------------------

log "bench: serve"
"$NBDVAULT" serve --repo "$work/repo" --socket "$work/vault.sock" 2> /dev/null &
vault=$!
pids+=("$vault")
for _ in $(seq 100); do [ -S "$work/vault.sock" ] && break; sleep 0.05; done
read -r t_qemu_read t_vault_read < <(pair "$RUNS" "" "nbdcopy '$before' null:" \
    "" "nbdcopy 'nbd+unix:///d@$full_point?socket=$work/vault.sock' null:")
got t_qemu_read t_vault_read
rss_serve=$(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$vault/status")
kill "$vault"
wait "$vault" 2>/dev/null || :

# ---- Sizes ---------------------------------------------------------------------------------

repo_bytes=$(du -sb "$work/repo" | cut -f1)
catalog_bytes=$(( $(stat -c %s "$work/repo/catalog.db") + $(stat -c %s "$work/repo/catalog.db-wal" 2>/dev/null || echo 0) ))
packs_full=$full_stored

# ---- Report ----------------------------------------------------------------------------------

row() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }
pct() { echo "scale=1; 100 * $1 / $2" | bc -l; }
ok() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "yes"; else echo "**no**"; fi; }
{
    echo "# Benchmarks"
    echo
    echo "Written by \`scripts/bench.sh\` (\`make bench\`) on $(date -u +%Y-%m-%d): $cores cores ($cpu),"
    echo "kernel $(uname -r),"
    echo "median of $RUNS runs ($FAST_RUNS for the incremental), each tool taking turns with"
    echo "what it is compared with.  The disk: 4 GiB qcow2, 1.5 GiB of a tar of /usr, 512 MiB of"
    echo "random data, the rest holes; the bitmap b0 holds 1% of the disk as scattered 64 KiB"
    echo "granules; qemu-nbd --shared=8 on a Unix socket.  Ratios compare with the tool a"
    echo "user would use instead, measured in the same run."
    echo
    echo "| measure | nbdvault | instead | ratio | target |"
    echo "|---|---|---|---|---|"
    row "full backup (s)" "$t_full" "nbdcopy \\| zstd -1 -T2: $t_nbdcopy_zstd" \
        "$(ratio "$t_nbdcopy_zstd" "$t_full")x faster" ">= 1.6x faster: $(ok "$t_nbdcopy_zstd >= 1.6 * $t_full")"
    row "read ceiling (s)" "" "nbdcopy null: $t_nbdcopy_null" "" ""
    row "compression floor (s)" "" "zstd -1 -T2 of the $((data_only_bytes / MiB)) MiB of data alone, from memory: $t_compress_alone" \
        "full backup takes $(ratio "$t_full" "$t_compress_alone")x" "<= 1.5x: $(ok "$t_full <= 1.5 * $t_compress_alone")"
    row "incremental backup (s)" "$t_incr" "python3-libnbd dirty walk: $t_walk" \
        "$(ratio "$t_walk" "$t_incr")x" "no slower: $(ok "$t_incr <= $t_walk")"
    row "restore to raw (s)" "$t_restore" "qemu-img convert -O raw + sync: $t_convert" \
        "$(ratio "$t_convert" "$t_restore")x" "no slower: $(ok "$t_restore <= $t_convert")"
    row "read a served point, nbdcopy (s)" "$t_vault_read" "qemu-nbd qcow2: $t_qemu_read" \
        "$(ratio "$t_qemu_read" "$t_vault_read")x speed" ">= 0.9x: $(ok "$t_qemu_read >= 0.9 * $t_vault_read")"
    row "peak RSS backup 4G / 16G (MiB)" "$rss_backup / $rss_backup_big" "" "" "<= 64: $(ok "$rss_backup <= 64 && $rss_backup_big <= 64")"
    row "peak RSS incremental (MiB)" "$rss_incr" "" "" "<= 64: $(ok "$rss_incr <= 64")"
    row "peak RSS restore 4G / 16G (MiB)" "$rss_restore / $rss_restore_big" "" "" "<= 64: $(ok "$rss_restore <= 64 && $rss_restore_big <= 64")"
    row "peak RSS serve (MiB)" "$rss_serve" "" "" ""
    row "incremental stored (bytes)" "$incr_stored" "zstd -1 of its dirty extents: $dirty_zstd" \
        "$(ratio "$incr_stored" "$dirty_zstd")x" "<= 1.5x: $(ok "$incr_stored <= 1.5 * $dirty_zstd")"
    row "incremental read (bytes)" "$incr_read" "dirty extents: $dirty_bytes" "" ""
    row "catalog / repository" "$catalog_bytes / $repo_bytes" "" "$(pct "$catalog_bytes" "$repo_bytes")%" \
        "<= 1%: $(ok "$catalog_bytes * 100 <= $repo_bytes")"
    row "full point stored (bytes)" "$packs_full" "zstd -1 of the disk: $zstd_size" \
        "$(ratio "$packs_full" "$zstd_size")x" "within 5%: $(ok "$packs_full <= 1.05 * $zstd_size")"
} > "$work/table.md"
cat "$work/table.md"
if [ -n "$OUT_MD" ]; then
    # Keep the other sections (running VMs, object storage, the history)
    # below the newest table.
    old=$( [ -f "$OUT_MD" ] && sed -n '/^## /,$p' "$OUT_MD" || true)
    { cat "$work/table.md"; echo; if [ -n "$old" ]; then echo "$old"; else echo "## History"; echo; fi; } > "$OUT_MD.tmp"
    mv "$OUT_MD.tmp" "$OUT_MD"
fi
