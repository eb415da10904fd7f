#!/bin/bash
# When the server fails BLOCK_STATUS while the backup plans its reads
# (nbdkit's error filter on extents), the backup fails with exit 1: it must
# never record a point with no data in it, which would restore as zeros.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
requires nbdkit --filter=error memory 1M --version

head -c $((4 * 1048576)) /dev/urandom > data.bin
start_nbdkit e.sock --filter=error file data.bin error-extents-rate=100% error-extents=EIO
uri="nbd+unix:///?socket=$testdir/e.sock"
expect_fail 1 "block status" "$NBDVAULT" backup "$uri" --repo "$testdir/repo" --disk e
n=$("$NBDVAULT" list --repo "$testdir/repo" --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')
[ "$n" = 0 ] || fail "a backup whose planning failed recorded $n point(s)"
