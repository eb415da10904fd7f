#!/bin/bash
# Benchmarks nbdvault's backups of a running libvirt domain against
# virtnbdbackup (the tool users pick today), in the same run, on the same
# disk, and appends the table to docs/BENCHMARKS.md ("Running VMs").
#
#   scripts/bench-vm.sh          (make bench-vm; needs root: libvirtd)
#
# Two transient TCG domains, each on its own copy of the benchmarks' 4 GiB
# reference disk (1.5 GiB of files, 512 MiB random, holes), so that the two
# tools' checkpoints never meet: nbdvault backs up one, virtnbdbackup -z
# (its lz4 compression on) the other.  Full backup; then the same ~1%
# scattered 64 KiB granules of random data written into both guests
# (HMP qemu-io through the guest's own device); the incremental; a restore
# of the newest point of both (nbdvault restore --libvirt to sparse raw
# files; virtnbdrestore to its qcow2 files), each followed by a sync.
# Wall time, bytes read from the VM, bytes stored, peak RSS.
set -euo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
BENCH_DIR=${BENCH_DIR:-/var/tmp/nbdvault-bench}
OUT_MD=${BENCH_OUT:-docs/BENCHMARKS.md}
PY=/usr/bin/python3
GiB=$((1024 * 1024 * 1024))
MiB=$((1024 * 1024))
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$BENCH_DIR"
work=$(mktemp -d "$BENCH_DIR/vm.XXXXXX")
chmod 0711 "$work"
doms=()
cleanup() {
    for d in "${doms[@]}"; do virsh -q destroy "$d" >/dev/null 2>&1 || :; done
    "$here/libvirtd-test.sh" stop >/dev/null 2>&1 || :
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '%s\n' "$*" >&2; }
. "$here/bench-disk.sh"

disk=$BENCH_DIR/disk-4g.qcow2
[ -f "$disk" ] && [ -f "$disk.before" ] || make_disk "$disk" $((4 * GiB))
"$here/libvirtd-test.sh" start

# A domain on its own copy of the disk before the bitmap's writes.
make_domain() {   # make_domain NAME
    local name=$1
    cp "$disk.before" "$work/$name.qcow2"
    qemu-img bitmap --remove "$work/$name.qcow2" b0 2>/dev/null || :
    chmod 0666 "$work/$name.qcow2"
    cat > "$work/$name.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='$work/$name.qcow2'/><target dev='vda' bus='virtio'/></disk></devices>
</domain>
XML
    virsh -q create "$work/$name.xml" >/dev/null
    doms+=("$name")
}
A=nbdvault-bench-a
B=nbdvault-bench-b
make_domain $A
make_domain $B

now() { date +%s.%N; }
# measure NAME CMD...: wall time (with a sync after) and peak RSS of CMD,
# into ${NAME}_t and ${NAME}_rss.
measure() {
    local name=$1 s e
    shift
    sync
    s=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$@" > "$work/$name.out" 2> "$work/$name.err" ||
        { cat "$work/$name.err" >&2; log "bench-vm: $name failed"; exit 1; }
    sync
    e=$(now)
    printf -v "${name}_t" '%.2f' "$(echo "$e - $s" | bc -l)"
    printf -v "${name}_rss" '%d' $(( $(tail -n 1 "$work/rss") / 1024 ))
}
jsum() {   # jsum FILE KEY: the sum of KEY over a JSON array
    $PY -c 'import json,sys; print(sum(o[sys.argv[2]] for o in json.load(open(sys.argv[1]))))' "$1" "$2"
}
ratio() { echo "scale=2; $1 / $2" | bc -l; }
ok() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "yes"; else echo "**no**"; fi; }

log "bench-vm: full backups"
measure vfull "$NBDVAULT" backup --libvirt $A --repo "$work/repo" --work-dir "$work" --json
measure xfull virtnbdbackup -d $B -l full -z -o "$work/vnb" -C "$work/vnb-ck" -S "$work" -n
vfull_read=$(jsum "$work/vfull.out" bytes_read)
vfull_stored=$(du -sb "$work/repo" | cut -f1)
xfull_stored=$(du -sb "$work/vnb" | cut -f1)

log "bench-vm: ~1% scattered writes into both guests"
size=$((4 * GiB))
$PY - "$size" "$work/granules" <<'PY'
import os, random, sys
size = int(sys.argv[1])
os.makedirs(sys.argv[2], exist_ok=True)
random.seed(11)
with open(sys.argv[2] + "/list", "w") as f:
    for i, c in enumerate(sorted(random.sample(range(size // 65536), size // 100 // 65536))):
        p = "%s/g%05d" % (sys.argv[2], i)
        with open(p, "wb") as g:
            g.write(os.urandom(65536))
        f.write("%s %d\n" % (p, c * 65536))
PY
chmod -R a+rX "$work/granules"
while read -r f off; do
    for d in $A $B; do
        virsh -q qemu-monitor-command $d --hmp \
            "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -s $f $off 64k\"" >/dev/null
    done
done < "$work/granules/list"
written=$(( $(wc -l < "$work/granules/list") * 65536 ))

log "bench-vm: incrementals"
stored0=$vfull_stored
xstored0=$xfull_stored
measure vinc "$NBDVAULT" backup --libvirt $A --repo "$work/repo" --work-dir "$work" --json
measure xinc virtnbdbackup -d $B -l inc -z -o "$work/vnb" -C "$work/vnb-ck" -S "$work" -n
vinc_read=$(jsum "$work/vinc.out" bytes_read)
vinc_stored=$(( $(du -sb "$work/repo" | cut -f1) - stored0 ))
xinc_stored=$(( $(du -sb "$work/vnb" | cut -f1) - xstored0 ))

log "bench-vm: restores"
measure vrest "$NBDVAULT" restore --repo "$work/repo" --libvirt $A --output-dir "$work/rv"
measure xrest virtnbdrestore -i "$work/vnb" -o "$work/rx" -n
# Both restored the same bytes as the guests' disks hold now.
rx=$(find "$work/rx" -maxdepth 1 -type f ! -name '*.xml' ! -name '*.log' | head -n 1)
[ -n "$rx" ] || { log "bench-vm: virtnbdrestore wrote no image: $(ls "$work/rx")"; exit 1; }
qemu-img compare -q -f raw "$work/rv/vda.raw" "$rx" ||
    { log "bench-vm: the two restores differ ($rx)"; exit 1; }

cpu=$(awk -F: '/model name/ { sub(/^ */, "", $2); print $2; exit }' /proc/cpuinfo)
row() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }
{
    echo "## Running VMs: nbdvault backup --libvirt against virtnbdbackup"
    echo
    echo "Written by \`scripts/bench-vm.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores ($cpu), one run."
    echo "Two transient TCG domains on copies of the 4 GiB reference disk; virtnbdbackup"
    echo "$(virtnbdbackup -V 2>&1 | head -n 1) with -z (lz4); the incremental after"
    echo "$((written / MiB)) MiB of scattered 64 KiB random granules written by the guests."
    echo
    echo "| measure | nbdvault | virtnbdbackup | ratio | target |"
    echo "|---|---|---|---|---|"
    row "full backup (s)" "$vfull_t" "$xfull_t" "$(ratio "$xfull_t" "$vfull_t")x faster" \
        "2x faster: $(ok "$xfull_t >= 2 * $vfull_t")"
    row "full: read from the VM / stored (bytes)" "$vfull_read / $vfull_stored" "- / $xfull_stored" \
        "$(ratio "$vfull_stored" "$xfull_stored")x the size" "no larger: $(ok "$vfull_stored <= $xfull_stored")"
    row "full: peak RSS (MiB)" "$vfull_rss" "$xfull_rss" "" ""
    row "incremental (s)" "$vinc_t" "$xinc_t" "$(ratio "$xinc_t" "$vinc_t")x faster" \
        "no slower: $(ok "$vinc_t <= $xinc_t")"
    row "incremental: read / stored (bytes)" "$vinc_read / $vinc_stored" "- / $xinc_stored" \
        "$(ratio "$vinc_stored" "$xinc_stored")x the size" "no larger: $(ok "$vinc_stored <= $xinc_stored")"
    row "incremental: peak RSS (MiB)" "$vinc_rss" "$xinc_rss" "" ""
    row "restore of the newest point (s)" "$vrest_t" "virtnbdrestore: $xrest_t" \
        "$(ratio "$xrest_t" "$vrest_t")x faster" ""
    row "restore: peak RSS (MiB)" "$vrest_rss" "$xrest_rss" "" ""
} > "$work/table.md"
cat "$work/table.md"
if [ -n "$OUT_MD" ] && [ -f "$OUT_MD" ]; then
    # Replace the section of an earlier run, keep everything else.
    $PY - "$OUT_MD" "$work/table.md" <<'PY'
import sys
doc = open(sys.argv[1]).read()
new = open(sys.argv[2]).read()
head = "## Running VMs: nbdvault backup --libvirt against virtnbdbackup"
if head in doc:
    a = doc.index(head)
    b = doc.find("\n## ", a + 1)
    doc = doc[:a] + new + ("\n" + doc[b + 1:] if b >= 0 else "")
else:
    h = doc.find("\n## History")
    doc = doc[:h + 1] + new + "\n" + doc[h + 1:] if h >= 0 else doc + "\n" + new
open(sys.argv[1], "w").write(doc)
PY
fi
