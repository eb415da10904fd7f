#!/bin/bash
# backup --max-rate RATE: the reads of a backup stay under RATE bytes per
# second over all connections (a lower bound on the time taken: the data
# over the rate, less one batch of burst; no upper bound is asserted), the
# point restores bit-identically, and a bad rate is bad usage.  Disk names
# with a slash (as VM backups record them: vm1/vda) work in every command.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version

M=1048576
qemu-img create -q -f qcow2 disk.qcow2 $((32 * M))
head -c $((5 * M)) /dev/urandom > rand.bin
qemu-io -f qcow2 -c "write -P 0x11 $((10 * M)) 1M" disk.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -s rand.bin 0 $((5 * M))" disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
qemu-img convert -O raw disk.qcow2 ref.raw
serve_disk disk.qcow2

expect_fail 2 'bad --max-rate "fast"' "$NBDVAULT" backup "$uri" --repo repo --disk vm1/vda --max-rate fast
expect_fail 2 'bad --max-rate "0"' "$NBDVAULT" backup "$uri" --repo repo --disk vm1/vda --max-rate 0

data=$(nbdinfo --map "$uri" | awk '$3 == 0 || $3 == 1 { s += $2 } END { print s + 0 }')
start=$(date +%s.%N)
backup_json b1.json "$uri" --repo repo --disk vm1/vda --max-rate 2M
end=$(date +%s.%N)
read_bytes=$(jget b1.json bytes_read)
[ "$read_bytes" -ge $((6 * M)) ] || fail "the backup read $read_bytes bytes, not the 6 MiB of data"
# At 2 MiB/s with at most 1 MiB of burst, reading R bytes takes at least
# (R - 1 MiB) / 2 MiB seconds.
"$PYTHON" -c "import sys; sys.exit(0 if $end - $start >= ($read_bytes - $M) / (2.0 * $M) else 1)" \
    || fail "--max-rate 2M read $read_bytes bytes in $(echo "$end - $start" | bc) s"
restore_and_compare repo vm1/vda "$(jget b1.json point)" ref.raw

# The slashed name in list, verify, prune and serve.
"$NBDVAULT" list --repo repo --disk vm1/vda | grep -q "vm1/vda" || fail "list --disk vm1/vda"
run "$NBDVAULT" verify --repo repo --disk vm1/vda || fail "verify --disk vm1/vda"
run "$NBDVAULT" prune --repo repo --disk vm1/vda --keep-last 1 || fail "prune --disk vm1/vda"
"$NBDVAULT" serve --repo repo --socket "$testdir/s.sock" &
_add_pid $!
for i in $(seq 50); do [ -S s.sock ] && break; sleep 0.1; done
run nbdcopy "nbd+unix:///vm1/vda@$(jget b1.json point)?socket=$testdir/s.sock" served.raw \
    || fail "nbdcopy of the served vm1/vda"
cmp served.raw ref.raw || fail "the served vm1/vda differs"
