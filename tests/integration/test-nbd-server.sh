#!/bin/bash
# Against nbd-server (simple replies only, no metadata contexts, TCP):
# info says "using simple packets" / structured false; pread, a pool
# download and pwrite move the right bytes, even at an export size that is
# not a multiple of 512; map fails cleanly with exit 1; commands the server
# does not advertise are refused by the client; --list shows both exports.
. "$(dirname "$0")/lib.sh"
requires nbd-server -V
requires nbdinfo --version

size=$((5 * 1048576 + 1000))
head -c "$size" /dev/urandom > disk.img
truncate -s 1M w.img
port=$(free_port)
start_nbd_server "$port" disk.img w=w.img
uri="nbd://127.0.0.1:$port/disk"
wuri="nbd://127.0.0.1:$port/w"

run $NBDVAULT info "$uri" > info.txt
cat info.txt
grep -qx 'protocol: newstyle-fixed without TLS, using simple packets' info.txt ||
    fail "info does not say simple packets"
grep -qx $'\texport-size: '"$size" info.txt || fail "wrong export size"
grep -q 'contexts' info.txt && fail "a server without structured replies has no contexts"
run $NBDVAULT info --json "$uri" > info.json
nbdinfo --json "$uri" > nbdinfo.json
# nbd-server answers NBD_OPT_INFO (which nbdinfo uses) with size 0 and
# NBD_OPT_GO with the real size: compare everything else with nbdinfo.
json_equal nbdinfo.json info.json content contexts can_block_status_payload extended_headers \
    export-size export-size-str || fail "info --json differs from nbdinfo --json"
"$PYTHON" - info.json "$size" <<'EOF' || fail "info --json is wrong for nbd-server"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["structured"] is False and j["TLS"] is False and j["extended_headers"] is False, j
e = j["exports"][0]
assert e["export-name"] == "disk" and e["export-size"] == int(sys.argv[2]), e
assert e["contexts"] == [] and e["can_df"] is False, e
EOF

# Reads through simple replies: unaligned, and the short tail of the file.
run $NBDCORE_TOOL pread "$uri" 1000 100000 > piece
cmp piece <(tail -c +1001 disk.img | head -c 100000) || fail "pread 1000+100000 differs"
run $NBDCORE_TOOL pread "$uri" $((size - 1000)) 1000 > tail.bin
cmp tail.bin <(tail -c 1000 disk.img) || fail "pread of the last 1000 bytes differs"
expect_fail 1 'past the end' $NBDCORE_TOOL pread "$uri" $((size - 10)) 20

run $NBDCORE_TOOL download "$uri" got.img 4 > pool.out
cat pool.out
grep -q '^connections: [14]$' pool.out || fail "unexpected: $(cat pool.out)"
cmp disk.img got.img || fail "pool download differs from the file"

# Writes through simple replies, checked in the exported file.
head -c 10000 /dev/urandom > data
run $NBDCORE_TOOL pwrite "$wuri" 777 data
cmp data <(tail -c +778 w.img | head -c 10000) || fail "pwrite did not reach the file"
run $NBDCORE_TOOL zero "$wuri" 1000 500
cmp <(head -c 500 /dev/zero) <(tail -c +1001 w.img | head -c 500) || fail "zero did not reach the file"
# nbd-server advertises neither FUA, FLUSH nor TRIM: refused before sending.
expect_fail 1 'not allowed|not advertise|support' $NBDCORE_TOOL pwrite "$wuri" 0 data fua
expect_fail 1 'NBD_CMD_FLUSH' $NBDCORE_TOOL flush "$wuri"
expect_fail 1 'NBD_CMD_TRIM' $NBDCORE_TOOL trim "$wuri" 0 4096

# No structured replies, so no block status: map fails, naming the context.
expect_fail 1 '"base:allocation"' $NBDVAULT map "$uri"
[ ! -s expect.out ] || fail "a failed map printed: $(cat expect.out)"
expect_fail 1 'qemu:dirty-bitmap:b0' $NBDVAULT map --context qemu:dirty-bitmap:b0 --json "$uri"
[ ! -s expect.out ] || fail "a failed map --json printed: $(cat expect.out)"

# Both exports are listed.
run $NBDVAULT info --list "nbd://127.0.0.1:$port/" > list.txt
grep -qx 'export="disk":' list.txt && grep -qx 'export="w":' list.txt ||
    fail "--list does not show both exports: $(cat list.txt)"

expect_fail 1 'no export named "nosuch"' $NBDVAULT info "nbd://127.0.0.1:$port/nosuch"
