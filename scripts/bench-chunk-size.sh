#!/bin/bash
# Measures what the repository's chunk size costs: a full backup of a disk
# of real files, then an incremental after scattered small writes (1% of
# the disk in 4 KiB writes, as a guest's random updates), for each chunk
# size.  Prints time, bytes stored, catalog size.  Used to choose the
# default (docs/FORMAT.md, "Chunk size").
set -euo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
dir=$(mktemp -d /tmp/nbdvault-chunk.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

size=$((1024 * 1024 * 1024))
mkdir "$dir/files"
cp -r /usr/share/doc /usr/share/man /usr/include "$dir/files/" 2>/dev/null || true
mkfs.ext4 -q -F -d "$dir/files" "$dir/base.raw" $((size / 1048576))M
rm -rf "$dir/files"
qemu-img convert -f raw -O qcow2 "$dir/base.raw" "$dir/base.qcow2"
rm -f "$dir/base.raw"
# Scattered 4 KiB writes over 1% of the disk.
n=$((size / 100 / 4096))
python3 - "$size" "$n" > "$dir/writes" <<'PY'
import random, sys
size, n = int(sys.argv[1]), int(sys.argv[2])
random.seed(7)
for _ in range(n):
    print("-c\nwrite -P %d %d 4096" % (random.randrange(1, 255), random.randrange(size // 4096) * 4096))
PY

printf '%-8s %9s %12s %9s %12s %12s %10s\n' chunk full_s full_stored incr_s incr_read incr_stored catalog
for chunk in 64K 256K 1M 4M; do
    cp "$dir/base.qcow2" "$dir/d.qcow2"
    qemu-img bitmap --add "$dir/d.qcow2" b0
    rm -rf "$dir/repo"
    "$NBDVAULT" init --repo "$dir/repo" --chunk-size $chunk > /dev/null
    serve() { qemu-nbd --fork --pid-file="$dir/p" -k "$dir/s" -t -r -f qcow2 -B b0 --shared=4 "$dir/d.qcow2"; pid=$(cat "$dir/p"); }
    unserve() { kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; pid=; }
    serve
    "$NBDVAULT" backup "nbd+unix:///?socket=$dir/s" --repo "$dir/repo" --disk d --bitmap b0 --json > "$dir/f.json"
    unserve
    qemu-img bitmap --clear "$dir/d.qcow2" b0
    mapfile -t args < "$dir/writes"
    qemu-io -f qcow2 "${args[@]}" "$dir/d.qcow2" > /dev/null
    serve
    "$NBDVAULT" backup "nbd+unix:///?socket=$dir/s" --repo "$dir/repo" --disk d --bitmap b0 --json > "$dir/i.json"
    unserve
    printf '%-8s %9.2f %12s %9.2f %12s %12s %10s\n' $chunk "$(jget "$dir/f.json" seconds)" \
        "$(jget "$dir/f.json" bytes_stored)" "$(jget "$dir/i.json" seconds)" \
        "$(jget "$dir/i.json" bytes_read)" "$(jget "$dir/i.json" bytes_stored)" \
        "$(stat -c %s "$dir/repo/catalog.db")"
done
