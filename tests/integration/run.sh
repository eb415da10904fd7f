#!/bin/bash
# run.sh [TEST...]: runs the integration tests against real NBD servers.
#
# Every tests/integration/test-*.sh, or only those named (test-info,
# test-info.sh and tests/integration/test-info.sh all work), each in a
# fresh temporary directory under a time limit, its output kept in a log
# that is shown only when it fails.  Exit status 77 means skipped.  Ends
# with "integration: N passed, N failed, N skipped"; exits 1 if any failed.
#
# Environment: NBDVAULT and NBDCORE_TOOL (absolute paths, set by
# `make integration-check`), INTEGRATION_TIMEOUT (seconds per test,
# default 120), INTEGRATION_KEEP=1 to keep the directories of the tests.

here=$(cd "$(dirname "$0")" && pwd)
timeout_s=${INTEGRATION_TIMEOUT:-120}

if [ -z "${NBDVAULT:-}" ] || [ -z "${NBDCORE_TOOL:-}" ]; then
    echo "run.sh: set NBDVAULT and NBDCORE_TOOL (or use: make integration-check)" >&2
    exit 2
fi
for b in "$NBDVAULT" "$NBDCORE_TOOL"; do
    if [ ! -x "$b" ]; then
        echo "run.sh: $b is not an executable" >&2
        exit 2
    fi
done
export NBDVAULT NBDCORE_TOOL

tests=()
if [ $# -eq 0 ]; then
    for t in "$here"/test-*.sh; do
        [ -e "$t" ] && tests+=("$t")
    done
else
    for a in "$@"; do
        n=$(basename "$a")
        n=${n%.sh}
        if [ ! -f "$here/$n.sh" ]; then
            echo "run.sh: no test $here/$n.sh" >&2
            exit 2
        fi
        tests+=("$here/$n.sh")
    done
fi

# Heavy servers start once per suite: libvirtd (and virtlogd) when a
# selected test says "# requires: libvirtd", Ceph RGW (S3) when one says
# "# requires: rgw" (each test then makes buckets of its own).
_stops=()
stop_heavy() {
    for s in "${_stops[@]}"; do eval "$s"; done
}
trap stop_heavy EXIT
if grep -lq '^# requires: libvirtd' "${tests[@]}" 2>/dev/null; then
    "$here/../../scripts/libvirtd-test.sh" start --holder $$ ||
        { echo "run.sh: libvirtd could not be started" >&2; exit 1; }
    _stops+=("\"$here/../../scripts/libvirtd-test.sh\" stop --holder $$")
fi
if grep -lq '^# requires: rgw' "${tests[@]}" 2>/dev/null; then
    export RGW_DIR=${RGW_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/nbdvault-rgw.XXXXXX")}
    "$here/../../scripts/rgw-test.sh" start ||
        { echo "run.sh: Ceph RGW could not be started" >&2; exit 1; }
    _stops+=("\"$here/../../scripts/rgw-test.sh\" stop; rm -rf \"$RGW_DIR\"")
    eval "$("$here/../../scripts/rgw-test.sh" env)"
    export NBDVAULT_TEST_RGW=1
fi

passed=0
failed=0
skipped=0
failures=()
suite_start=$(date +%s)

for t in "${tests[@]}"; do
    name=$(basename "$t" .sh)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/nbdvault-it.XXXXXX")
    log=$(mktemp "${TMPDIR:-/tmp}/nbdvault-it-$name.log.XXXXXX")
    start=$(date +%s)
    # -k: a test that ignores SIGTERM is killed 10 s later.
    (cd "$dir" && INTEGRATION_TESTDIR=$dir exec timeout -k 10 "$timeout_s" bash "$t") \
        >"$log" 2>&1 </dev/null
    rc=$?
    secs=$(( $(date +%s) - start ))
    # Servers left behind by a test that was killed before its trap ran.
    # (lib.sh removes .pids once it has stopped them itself; the name
    # check guards against a pid that was reused since.)
    if [ -f "$dir/.pids" ]; then
        while read -r pid; do
            case $(cat "/proc/$pid/comm" 2>/dev/null) in
            qemu-nbd|nbdkit|nbd-server)
                kill "$pid" 2>/dev/null
                sleep 0.5
                kill -9 "$pid" 2>/dev/null
                ;;
            esac
        done < "$dir/.pids"
    fi
    case $rc in
    0)
        echo "PASS: $name (${secs}s)"
        passed=$((passed + 1))
        ;;
    77)
        echo "SKIP: $name: $(grep -m1 'SKIP' "$log" | sed 's/.*SKIP: //')"
        skipped=$((skipped + 1))
        ;;
    *)
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            why="timed out after ${timeout_s}s"
        else
            why="exit $rc"
        fi
        echo "FAIL: $name ($why, ${secs}s)"
        echo "---- log of $name ----"
        sed 's/^/    /' "$log"
        echo "---- end of $name ----"
        failed=$((failed + 1))
        failures+=("$name")
        ;;
    esac
    rm -f "$log"
    [ -n "${INTEGRATION_KEEP:-}" ] || rm -rf "$dir"
done

if [ "$failed" -gt 0 ]; then
    echo "failed: ${failures[*]}"
fi
echo "(integration suite took $(( $(date +%s) - suite_start ))s)"
echo "integration: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
