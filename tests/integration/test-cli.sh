#!/bin/bash
# The command line as a user meets it: --help of nbdvault and of every
# command exits 0 and prints a Usage line; bad usage (unknown command or
# option, a missing or extra URI) exits 2; failures exit 1 naming the URI:
# a bad scheme, a socket that does not exist, nothing listening on a TCP
# port, an export the server does not have.
. "$(dirname "$0")/lib.sh"
requires qemu-img --version
requires qemu-nbd --version

# ---- help ---------------------------------------------------------------
run $NBDVAULT --help > help.txt
grep -q '^Usage: nbdvault ' help.txt || fail "nbdvault --help prints no Usage line"
# The commands, from the help text itself: those of this suite must be there.
commands=$(awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { on = 0 }' help.txt)
echo "commands: $commands"
for c in info map; do
    grep -qx "$c" <<<"$commands" || fail "nbdvault --help does not list '$c'"
done
for c in $commands; do
    out=$($NBDVAULT "$c" --help) || fail "nbdvault $c --help exits $?"
    grep -q "^Usage: nbdvault $c" <<<"$out" || fail "nbdvault $c --help prints no 'Usage: nbdvault $c'"
    # Help goes to stdout, nothing to stderr.
    [ -z "$($NBDVAULT "$c" --help 2>&1 >/dev/null)" ] || fail "nbdvault $c --help writes to stderr"
done
run $NBDVAULT --version | grep -q '^nbdvault ' || fail "--version"

# ---- bad usage: exit 2, and a hint on stderr -----------------------------
expect_fail 2 'Usage' $NBDVAULT
expect_fail 2 "unknown command 'frobnicate'" $NBDVAULT frobnicate
expect_fail 2 'bad option|unrecognized' $NBDVAULT info --frobnicate 'nbd+unix:///?socket=/x'
expect_fail 2 'bad option|unrecognized' $NBDVAULT map --frobnicate 'nbd+unix:///?socket=/x'
expect_fail 2 'requires an argument|bad option' $NBDVAULT map --context
expect_fail 2 'bad --io-timeout "soon"' $NBDVAULT backup 'nbd+unix:///?socket=/x' --repo "$testdir/r" --disk d --io-timeout soon
# getopt's own messages name the command as ours do, then the usual hint.
expect_fail 2 "^nbdvault info: unrecognized option '--frobnicate'\$" $NBDVAULT info --frobnicate
grep -qx "Try 'nbdvault info --help'." expect.err || fail "no hint after an unrecognized option"
expect_fail 2 "^nbdvault map: option '--context' requires an argument\$" $NBDVAULT map --context
expect_fail 2 "^nbdvault backup: invalid option -- 'Z'\$" $NBDVAULT backup -Z
for c in $commands; do
    expect_fail 2 "^nbdvault $c: unrecognized option '--no-such-option'\$" $NBDVAULT "$c" --no-such-option
    [ "$(wc -l < expect.err)" = 2 ] || fail "nbdvault $c --no-such-option: not two lines: $(cat expect.err)"
done
expect_fail 2 'expected one NBD URI' $NBDVAULT info
expect_fail 2 'expected one NBD URI' $NBDVAULT map
expect_fail 2 'expected one NBD URI' $NBDVAULT map --totals --json
expect_fail 2 'expected one NBD URI' $NBDVAULT info 'nbd+unix:///?socket=/a' 'nbd+unix:///?socket=/b'
expect_fail 2 "Try 'nbdvault map --help'" $NBDVAULT map
# Bad usage must not print anything on stdout.
[ ! -s expect.out ] || fail "bad usage printed on stdout: $(cat expect.out)"

# ---- failures: exit 1, the URI named ------------------------------------
expect_fail 1 'foo://x.*unknown scheme "foo"' $NBDVAULT info 'foo://x'
expect_fail 1 'foo://x' $NBDVAULT map 'foo://x'
expect_fail 1 'socket=' $NBDVAULT info 'nbd+unix:///'
expect_fail 1 'nbd\+unix:///\?socket=/nonexistent/dir/nbd\.sock.*/nonexistent/dir/nbd\.sock: No such file' \
    $NBDVAULT info 'nbd+unix:///?socket=/nonexistent/dir/nbd.sock'
expect_fail 1 "$testdir/gone\\.sock" $NBDVAULT map "nbd+unix:///?socket=$testdir/gone.sock"
expect_fail 1 "$testdir/gone\\.sock" $NBDCORE_TOOL pread "nbd+unix:///?socket=$testdir/gone.sock" 0 1
# A socket file nobody listens on.
"$PYTHON" -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$testdir/dead.sock"
expect_fail 1 "$testdir/dead\\.sock.*refused" $NBDVAULT info "nbd+unix:///?socket=$testdir/dead.sock"
port=$(free_port)
expect_fail 1 "127\\.0\\.0\\.1:$port.*refused" $NBDVAULT info "nbd://127.0.0.1:$port/"

# A server with one export named "disk": another name is refused, named.
qemu-img create -q -f raw disk.img 1M
start_qemu_nbd s -t -r -x disk -f raw disk.img
expect_fail 1 'no export named "nosuch"' $NBDVAULT info "nbd+unix:///nosuch?socket=$testdir/s"
expect_fail 1 'no export named "nosuch"' $NBDVAULT map "nbd+unix:///nosuch?socket=$testdir/s"
expect_fail 1 'no export named ""' $NBDVAULT map "nbd+unix:///?socket=$testdir/s"
expect_fail 1 'no export named "nosuch"' $NBDCORE_TOOL pread "nbd+unix:///nosuch?socket=$testdir/s" 0 1
# The right name works, and --list shows it.
run $NBDVAULT info "nbd+unix:///disk?socket=$testdir/s" | grep -qx 'export="disk":' || fail "export disk not shown"
run $NBDVAULT info --list "nbd+unix:///?socket=$testdir/s" | grep -qx 'export="disk":' || fail "--list does not show disk"

# Options may follow the URI, as the usage lines write them
# ("nbdvault info URI [--list] [--json]"), with the same result.
u="nbd+unix:///disk?socket=$testdir/s"
run $NBDVAULT info --json "$u" > before.json
run $NBDVAULT info "$u" --json > after.json || fail "nbdvault info URI --json failed"
cmp before.json after.json || fail "info: --json after the URI gives other output"
run $NBDVAULT map --totals --context base:allocation "$u" > before.map
run $NBDVAULT map "$u" --context base:allocation --totals > after.map || fail "nbdvault map URI --context ... --totals failed"
cmp before.map after.map || fail "map: options after the URI give other output"
run $NBDVAULT info "nbd+unix:///?socket=$testdir/s" --list > after.list || fail "nbdvault info URI --list failed"
grep -qx 'export="disk":' after.list || fail "info URI --list does not show disk"

# Every command that needs a repository says so, as bad usage (exit 2).
for cmd in list verify gc; do
    expect_fail 2 "$cmd: --repo DIR is required" "$NBDVAULT" $cmd
done
expect_fail 2 "restore: --repo DIR is required" "$NBDVAULT" restore --disk d --output x.raw
expect_fail 2 "prune: --repo DIR is required" "$NBDVAULT" prune --disk d --keep-last 1
expect_fail 2 "serve: --repo DIR is required" "$NBDVAULT" serve --socket s.sock
