#!/bin/bash
# make demo: nbdvault's main job, end to end, on a disk it makes itself.
#
#  1. a 512 MiB qcow2 disk holding an ext4 file system full of real files
#     (/usr/share/doc and /usr/share/man), with a persistent dirty bitmap;
#  2. exported read-only by qemu-nbd with the bitmap and multi-conn;
#  3. a full backup, then the "guest" rewrites some files in place and
#     discards a region, then an incremental backup;
#  4. both points restored and compared with the disk as it was;
#  5. a short report: bytes read against the disk size, bytes stored, times.
set -euo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
dir=$(mktemp -d /tmp/nbdvault-demo.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
human() { numfmt --to=iec --suffix=B "$1"; }

serve() {
    qemu-nbd --fork --pid-file="$dir/qemu-nbd.pid" -k "$dir/nbd.sock" -t -r -f qcow2 -x vm1 \
        -B nightly -A --shared=4 "$dir/disk.qcow2"
    pid=$(cat "$dir/qemu-nbd.pid")
}
unserve() { kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; pid=; }
uri="nbd+unix:///vm1?socket=$dir/nbd.sock"
repo=$dir/repo

say "A 512 MiB disk with an ext4 file system of real files, and a dirty bitmap"
mkdir "$dir/files"
cp -r /usr/share/doc "$dir/files/doc" 2>/dev/null || true
cp -r /usr/share/man "$dir/files/man" 2>/dev/null || true
mkfs.ext4 -q -F -d "$dir/files" "$dir/disk.raw" 512M
qemu-img convert -f raw -O qcow2 "$dir/disk.raw" "$dir/disk.qcow2"
rm -f "$dir/disk.raw"
qemu-img bitmap --add "$dir/disk.qcow2" nightly
echo "files: $(find "$dir/files" -type f | wc -l), $(du -sh "$dir/files" | cut -f1)"

say "Full backup: nbdvault backup $uri --repo REPO --disk vm1 --bitmap nightly"
serve
"$NBDVAULT" map --totals "$uri"
"$NBDVAULT" backup "$uri" --repo "$repo" --disk vm1 --bitmap nightly --json > "$dir/full.json"
cat "$dir/full.json"
unserve
qemu-img convert -O raw "$dir/disk.qcow2" "$dir/at-full.raw"
qemu-img bitmap --clear "$dir/disk.qcow2" nightly

say "The guest rewrites files in place and discards a region"
# The blocks of a few files, found in the file system, are rewritten; a
# region is discarded.  The bitmap records every write.
qemu-img convert -f qcow2 -O raw "$dir/disk.qcow2" "$dir/scan.raw"
changed=0
cmds=()
for f in $(cd "$dir/files" && find doc -type f -size +64k | head -n 20); do
    for blk in $(debugfs -R "blocks /$f" "$dir/scan.raw" 2>/dev/null | head -c 2000); do
        cmds+=(-c "write -P 0x5a $((blk * 4096)) 4096")
        changed=$((changed + 4096))
    done
done
rm -f "$dir/scan.raw"
qemu-io -f qcow2 "${cmds[@]}" "$dir/disk.qcow2" >/dev/null
qemu-io -f qcow2 -c "discard 400M 8M" "$dir/disk.qcow2" >/dev/null
echo "rewrote $(human $changed) of file blocks, discarded 8 MiB"

say "Incremental backup (reads only what the bitmap marks dirty)"
serve
"$NBDVAULT" map --context qemu:dirty-bitmap:nightly --totals "$uri"
"$NBDVAULT" backup "$uri" --repo "$repo" --disk vm1 --bitmap nightly --json > "$dir/incr.json"
cat "$dir/incr.json"
unserve
qemu-img convert -O raw "$dir/disk.qcow2" "$dir/at-incr.raw"

say "nbdvault list"
"$NBDVAULT" list --repo "$repo"

say "Restore both points and compare with the disk as it was"
t0=$(date +%s.%N)
"$NBDVAULT" restore --repo "$repo" --disk vm1 --point "$(jget "$dir/full.json" point)" --output "$dir/r-full.raw"
"$NBDVAULT" restore --repo "$repo" --disk vm1 --point "$(jget "$dir/incr.json" point)" --output "$dir/r-incr.raw"
t1=$(date +%s.%N)
cmp "$dir/r-full.raw" "$dir/at-full.raw" && echo "full point: identical to the disk at the full backup"
cmp "$dir/r-incr.raw" "$dir/at-incr.raw" && echo "incremental point: identical to the disk at the incremental"

say "nbdvault verify"
"$NBDVAULT" verify --repo "$repo"

size=$(jget "$dir/full.json" disk_size)
say "Report"
printf '%-12s %12s %12s %12s %8s\n' backup "read" stored "disk size" seconds
for k in full incr; do
    printf '%-12s %12s %12s %12s %8.2f\n' "$k" "$(human "$(jget "$dir/$k.json" bytes_read)")" \
        "$(human "$(jget "$dir/$k.json" bytes_stored)")" "$(human "$size")" "$(jget "$dir/$k.json" seconds)"
done
echo "repository: $(du -sh "$repo" | cut -f1); both restores: $(printf '%.2f' "$(echo "$t1 - $t0" | bc)") s"
