#!/bin/bash
# make demo: shows nbdvault at work against a qemu-nbd export it starts.
set -euo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
dir=$(mktemp -d /tmp/nbdvault-demo.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

say "A 256 MiB qcow2 disk with data, a persistent dirty bitmap, then changes"
qemu-img create -q -f qcow2 "$dir/disk.qcow2" 256M
qemu-io -f qcow2 -c 'write -P 0x11 0 32M' "$dir/disk.qcow2" >/dev/null
qemu-img bitmap --add "$dir/disk.qcow2" nightly
qemu-io -f qcow2 -c 'write -P 0x22 1M 64k' -c 'write -P 0x33 100M 3M' -c 'write -z 200M 1M' \
        "$dir/disk.qcow2" >/dev/null
qemu-nbd -k "$dir/nbd.sock" -t -r -f qcow2 -x vm1 -B nightly -A --shared=4 "$dir/disk.qcow2" &
pid=$!
for _ in $(seq 100); do [ -S "$dir/nbd.sock" ] && break; sleep 0.05; done
uri="nbd+unix:///vm1?socket=$dir/nbd.sock"

say "nbdvault info $uri"
"$NBDVAULT" info "$uri"
say "nbdvault map --totals (base:allocation)"
"$NBDVAULT" map --totals "$uri"
say "nbdvault map --context qemu:dirty-bitmap:nightly (what changed since the bitmap)"
"$NBDVAULT" map --context qemu:dirty-bitmap:nightly "$uri"
