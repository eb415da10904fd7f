# lib.sh: helpers sourced by every tests/integration/test-*.sh (bash).
#
# In the manner of nbdkit's tests/functions.sh: a test is a small script
# that starts real servers, drives them with nbdvault / nbdcore-tool and
# the reference clients (nbdinfo, nbdcopy, qemu-img), and exits 0 (pass),
# 77 (skip: something it needs is missing) or anything else (fail).
#
#   . "$(dirname "$0")/lib.sh"
#   requires qemu-nbd --version
#   start_qemu_nbd sock -r -f raw disk.img
#
# The test runs in a fresh temporary directory ($testdir, also the current
# directory), which the cleanup trap removes together with every server the
# test started (killed by pid, never by name).  Keep socket names short:
# a Unix socket path is limited to 107 bytes.
#
# Helpers: requires, skip, fail, expect_fail, run, json_equal, cleanup_fn,
# free_port, start_qemu_nbd, start_nbdkit, start_nbd_server, stop_server,
# make_psk, make_x509.  $PYTHON is Debian's python3 (json, python3-libnbd).
# INTEGRATION_KEEP=1 keeps the directory; INTEGRATION_TRACE=1 traces.

set -e
set -o pipefail
# INTEGRATION_TRACE=1: trace every command with a timestamp (bash ignores a
# PS4 from the environment when run as root).
if [ -n "${INTEGRATION_TRACE:-}" ]; then
    PS4='+ $EPOCHREALTIME '
    set -x
fi

: "${NBDVAULT:?NBDVAULT must name the nbdvault binary (run through make integration-check)}"
: "${NBDCORE_TOOL:?NBDCORE_TOOL must name the nbdcore-tool binary}"
export NBDVAULT NBDCORE_TOOL

# Debian's interpreter: the one that sees python3-libnbd and where the json
# module is always present, whatever python3 comes first on PATH.
PYTHON=/usr/bin/python3

# ---- Temporary directory and cleanup ------------------------------------

if [ -n "${INTEGRATION_TESTDIR:-}" ] && [ -d "$INTEGRATION_TESTDIR" ]; then
    testdir=$INTEGRATION_TESTDIR
else
    testdir=$(mktemp -d "${TMPDIR:-/tmp}/nbdvault-it.XXXXXX")
fi
cd "$testdir"

_pids=()          # servers started by this test
_cleanup_fns=()   # extra commands, run before the servers are killed

# cleanup_fn CMD ARGS...: run CMD ARGS at exit (any exit, pass or fail).
cleanup_fn ()
{
    _cleanup_fns+=("$(printf '%q ' "$@")")
}

# Records a server's pid for the cleanup trap, and in $testdir/.pids for
# run.sh, which kills what is left if the test itself was killed.
_add_pid ()
{
    _pids+=("$1")
    echo "$1" >> "$testdir/.pids"
}

# Whether pid runs (a zombie does not: a daemon's parent is init, which
# may take its time to reap it).
_alive ()
{
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

_kill_pid ()
{
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        _alive "$pid" || return 0
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || :
}

# stop_server PID: stops a server this test started and waits until it is
# gone (its image locks released), e.g. before serving the image again.
stop_server ()
{
    _kill_pid "$1"
}

_cleanup ()
{
    local status=$? f pid
    set +e
    trap - EXIT INT TERM HUP
    for f in "${_cleanup_fns[@]}"; do
        eval "$f"
    done
    for pid in "${_pids[@]}"; do
        _kill_pid "$pid"
    done
    rm -f "$testdir/.pids"
    # Reap our own children so that none is left a zombie.
    wait 2>/dev/null
    cd /
    if [ -n "${INTEGRATION_KEEP:-}" ]; then
        echo "$0: kept $testdir" >&2
    else
        rm -rf "$testdir"
    fi
    exit "$status"
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---- Results -------------------------------------------------------------

fail ()
{
    echo "$0: FAIL: $*" >&2
    exit 1
}

skip ()
{
    echo "$0: SKIP: $*"
    exit 77
}

# requires CMD [ARGS...]: skip the test unless CMD runs successfully (a lone
# word only has to be on PATH).  E.g. `requires nbdkit sparse-random --version`.
requires ()
{
    if [ $# -eq 1 ]; then
        command -v "$1" >/dev/null 2>&1 || skip "'$1' not found"
    else
        ( "$@" ) </dev/null >/dev/null 2>&1 || skip "'$*' failed"
    fi
}

# expect_fail EXITCODE PATTERN CMD ARGS...: CMD must exit with EXITCODE and
# its stderr must match the extended regular expression PATTERN (case
# matters: "TLS" must not match the "tls-..." of a URI in the message).  Its stdout is left in $testdir/expect.out, its stderr
# in $testdir/expect.err.
expect_fail ()
{
    local want=$1 pattern=$2 rc=0
    shift 2
    "$@" >"$testdir/expect.out" 2>"$testdir/expect.err" </dev/null || rc=$?
    if [ "$rc" -ne "$want" ] || ! grep -Eq -- "$pattern" "$testdir/expect.err"; then
        echo "command: $*" >&2
        echo "exit code: $rc (wanted $want)" >&2
        echo "--- stdout:" >&2
        cat "$testdir/expect.out" >&2
        echo "--- stderr (wanted a match for /$pattern/):" >&2
        cat "$testdir/expect.err" >&2
        fail "expect_fail $want '$pattern' $*"
    fi
    echo "expected failure ($rc): $(head -n 3 "$testdir/expect.err")"
}

# run CMD...: show the command in the log, then run it.
run ()
{
    echo "+ $*" >&2
    "$@"
}

# json_equal A B [IGNORED_KEY...]: the two JSON files hold the same value
# (objects compared without regard to key order, numbers by value), after
# dropping IGNORED_KEY from every object.  Non-integral numbers agree to six
# significant digits: nbdinfo prints them with %g (99.2188 for 99.21875).
json_equal ()
{
    "$PYTHON" - "$@" <<'EOF'
import json, sys
a, b, ignored = sys.argv[1], sys.argv[2], set(sys.argv[3:])
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in ignored}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
with open(a) as f: va = strip(json.load(f))
with open(b) as f: vb = strip(json.load(f))
def same(x, y):
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    if isinstance(x, float) or isinstance(y, float):
        return isinstance(x, (int, float)) and isinstance(y, (int, float)) and \
            abs(x - y) <= 5e-6 * max(abs(x), abs(y))
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and \
            all(same(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and \
            all(same(p, q) for p, q in zip(x, y))
    return type(x) is type(y) and x == y
if not same(va, vb):
    print("JSON differs:\n%s: %s\n%s: %s" % (a, json.dumps(va, sort_keys=True),
                                           b, json.dumps(vb, sort_keys=True)), file=sys.stderr)
    sys.exit(1)
EOF
}

# ---- Network -------------------------------------------------------------

# free_port: prints a TCP port of 127.0.0.1 that nobody uses now, taken
# below the ephemeral range, where the kernel never picks the source port
# of an outgoing connection (one of our clients could take a port from
# that range between free_port and the server's bind).
free_port ()
{
    "$PYTHON" -c 'import random, socket
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
pool = [p for p in range(10000, 32768) if not lo <= p <= hi] or list(range(1024, 65536))
for p in random.sample(pool, 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("free_port: no free port found")'
}

# _wait_listening unix PATH | tcp PORT: until a connection is accepted
# (up to 10 s).  Used only for servers that survive a probe connection.
_wait_listening ()
{
    local kind=$1 where=$2 i
    for i in $(seq 100); do
        if "$PYTHON" - "$kind" "$where" <<'EOF' 2>/dev/null
import socket, sys
kind, where = sys.argv[1], sys.argv[2]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.connect(where)
else:
    s = socket.create_connection(("127.0.0.1", int(where)))
s.close()
EOF
        then
            return 0
        fi
        sleep 0.1
    done
    fail "nothing accepts connections on $kind $where"
}

_wait_pidfile ()
{
    local f=$1 i
    for i in $(seq 100); do
        [ -s "$f" ] && return 0
        sleep 0.1
    done
    fail "no pid file $f"
}

# ---- Servers -------------------------------------------------------------

# start_qemu_nbd SOCK ARGS...: qemu-nbd on Unix socket SOCK (or, when SOCK is
# a number, on TCP 127.0.0.1:SOCK).  --fork makes qemu-nbd return once it
# listens, so no probe connection is needed (which would end a qemu-nbd
# started without -t).  Sets $qemu_nbd_pid.
start_qemu_nbd ()
{
    local sock=$1 pidfile
    shift
    [[ $sock =~ ^[0-9]+$ || $sock = /* ]] || sock=$testdir/$sock
    pidfile=$(mktemp "$testdir/qemu-nbd.pid.XXXX")
    rm -f "$pidfile"
    if [[ $sock =~ ^[0-9]+$ ]]; then
        run qemu-nbd --fork --pid-file="$pidfile" -b 127.0.0.1 -p "$sock" "$@"
    else
        run qemu-nbd --fork --pid-file="$pidfile" -k "$sock" "$@"
        [ -S "$sock" ] || fail "qemu-nbd did not create $sock"
    fi
    _wait_pidfile "$pidfile"
    qemu_nbd_pid=$(cat "$pidfile")
    _add_pid "$qemu_nbd_pid"
}

# start_nbdkit SOCK ARGS...: nbdkit on Unix socket SOCK (or TCP
# 127.0.0.1:SOCK when SOCK is a number).  nbdkit daemonizes once it
# listens.  Sets $nbdkit_pid.
start_nbdkit ()
{
    local sock=$1 pidfile
    shift
    [[ $sock =~ ^[0-9]+$ || $sock = /* ]] || sock=$testdir/$sock
    pidfile=$(mktemp "$testdir/nbdkit.pid.XXXX")
    rm -f "$pidfile"
    if [[ $sock =~ ^[0-9]+$ ]]; then
        run nbdkit -P "$pidfile" -i 127.0.0.1 -p "$sock" "$@"
    else
        run nbdkit -P "$pidfile" -U "$sock" "$@"
    fi
    _wait_pidfile "$pidfile"
    nbdkit_pid=$(cat "$pidfile")
    _add_pid "$nbdkit_pid"
    if [[ $sock =~ ^[0-9]+$ ]]; then
        _wait_listening tcp "$sock"
    else
        _wait_listening unix "$sock"
    fi
}

# start_nbd_server PORT FILE [NAME=FILE...]: nbd-server on TCP
# 127.0.0.1:PORT exporting FILE as "disk" (and each NAME=FILE too).
# Unix sockets do not work with nbd-server here (PEERS.md).  Sets
# $nbd_server_pid.
start_nbd_server ()
{
    local port=$1 file=$2 conf pidfile e
    shift 2
    conf=$(mktemp "$testdir/nbd-server.conf.XXXX")
    pidfile=$(mktemp "$testdir/nbd-server.pid.XXXX")
    rm -f "$pidfile"
    {
        printf '[generic]\n user = %s\n group = %s\n' "$(id -un)" "$(id -gn)"
        printf ' listenaddr = 127.0.0.1\n port = %s\n allowlist = true\n' "$port"
        printf '[disk]\n exportname = %s\n' "$(realpath "$file")"
        for e in "$@"; do
            printf '[%s]\n exportname = %s\n' "${e%%=*}" "$(realpath "${e#*=}")"
        done
    } > "$conf"
    run nbd-server -C "$conf" -p "$pidfile"
    _wait_pidfile "$pidfile"
    nbd_server_pid=$(cat "$pidfile")
    _add_pid "$nbd_server_pid"
    _wait_listening tcp "$port"
}

# ---- TLS credentials -----------------------------------------------------

# make_psk, make_x509: tests/tools/tls-creds.sh
. "$(dirname "${BASH_SOURCE[0]}")/../tools/tls-creds.sh"
