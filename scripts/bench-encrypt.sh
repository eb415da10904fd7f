#!/bin/bash
# The cost of encryption: the full backup, the restore and a served read
# of the reference disk (scripts/bench-disk.sh), each against the same on
# an unencrypted repository, taking turns (median of BENCH_RUNS, default
# 3); writes its section into docs/BENCHMARKS.md.  Target: at most 10%
# slower.
#
#   scripts/bench-encrypt.sh         (make bench runs it after bench-s3.sh)
set -euo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
BENCH_DIR=${BENCH_DIR:-/var/tmp/nbdvault-bench}
OUT_MD=${BENCH_OUT:-docs/BENCHMARKS.md}
RUNS=${BENCH_RUNS:-3}
GiB=$((1024 * 1024 * 1024))
MiB=$((1024 * 1024))
PY=/usr/bin/python3
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$BENCH_DIR"
work=$(mktemp -d "$BENCH_DIR/enc.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || :; done
    wait 2>/dev/null || :
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '%s\n' "$*" >&2; }

. "$here/bench-disk.sh"
disk=$BENCH_DIR/disk-4g.qcow2
[ -f "$disk" ] && [ -f "$disk.before" ] || make_disk "$disk" $((4 * GiB))
serve "$disk.before" "$work/before.sock"
before="nbd+unix:///?socket=$work/before.sock"

now() { date +%s.%N; }
timed() {   # timed PREP CMD: wall seconds of CMD (PREP untimed)
    local s e
    eval "$1"
    sync
    s=$(now)
    eval "$2" > /dev/null || { log "bench-encrypt: failed: $2"; exit 1; }
    e=$(now)
    echo "$e - $s" | bc -l
}
med() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
pair() {    # pair PREP_A CMD_A PREP_B CMD_B: the medians of A and B, taking turns
    local i ta=() tb=()
    for i in $(seq "$RUNS"); do
        ta+=("$(timed "$1" "$2")")
        tb+=("$(timed "$3" "$4")")
    done
    echo "$(med "${ta[@]}") $(med "${tb[@]}")"
}
key=$work/bench.key
init_enc="rm -rf '$work/enc' '$key' && '$NBDVAULT' init --repo '$work/enc' --encrypt --key-file '$key' >/dev/null"

log "bench-encrypt: full backup"
read -r t_plain t_enc < <(pair "rm -rf '$work/plain'" "'$NBDVAULT' backup '$before' --repo '$work/plain' --disk d" \
    "$init_enc" "'$NBDVAULT' backup '$before' --repo '$work/enc' --disk d --key-file '$key'")
log "bench-encrypt: restore"
read -r r_plain r_enc < <(pair "rm -f '$work/out.raw'" "'$NBDVAULT' restore --repo '$work/plain' --disk d --output '$work/out.raw'" \
    "rm -f '$work/out.raw'" "'$NBDVAULT' restore --repo '$work/enc' --disk d --output '$work/out.raw' --key-file '$key'")
rm -f "$work/out.raw"
log "bench-encrypt: serve"
"$NBDVAULT" serve --repo "$work/plain" --socket "$work/p.sock" 2>/dev/null &
pids+=("$!")
"$NBDVAULT" serve --repo "$work/enc" --key-file "$key" --socket "$work/e.sock" 2>/dev/null &
pids+=("$!")
for _ in $(seq 100); do [ -S "$work/p.sock" ] && [ -S "$work/e.sock" ] && break; sleep 0.05; done
read -r s_plain s_enc < <(pair "" "nbdcopy 'nbd+unix:///d?socket=$work/p.sock' null:" \
    "" "nbdcopy 'nbd+unix:///d?socket=$work/e.sock' null:")
plain_bytes=$(du -sb "$work/plain/packs" | cut -f1)
enc_bytes=$(du -sb "$work/enc/packs" | cut -f1)

cpu=$(awk -F: '/model name/ { sub(/^ */, "", $2); print $2; exit }' /proc/cpuinfo)
pct() { echo "scale=1; 100 * ($1 - $2) / $2" | bc -l; }
ok() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "yes"; else echo "**no**"; fi; }
row() { printf '| %s | %s | %s | %s%% | %s |\n' "$1" "$2" "$3" "$(pct "$2" "$3")" "<= 10%: $(ok "$2 <= 1.10 * $3")"; }
{
    echo "## Encryption: the cost"
    echo
    echo "Written by \`scripts/bench-encrypt.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores ($cpu), median"
    echo "of $RUNS runs taking turns; the 4 GiB disk above, an encrypted repository (AES-256-GCM"
    echo "through gnutls, HMAC-SHA256 chunk ids, a key file) against an unencrypted one."
    echo
    echo "| measure | encrypted | plain | cost | target |"
    echo "|---|---|---|---|---|"
    row "full backup (s)" "$t_enc" "$t_plain"
    row "restore to raw (s)" "$r_enc" "$r_plain"
    row "read a served point, nbdcopy (s)" "$s_enc" "$s_plain"
    printf '| packs (bytes) | %s | %s | %s%% | |\n' "$enc_bytes" "$plain_bytes" "$(pct "$enc_bytes" "$plain_bytes")"
} > "$work/enc.md"
cat "$work/enc.md"
put_section "$OUT_MD" "$work/enc.md"
