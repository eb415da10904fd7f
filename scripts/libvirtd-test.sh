#!/bin/bash
# libvirtd-test.sh start|stop|status [--holder PID]: one libvirtd (and its
# virtlogd) for a whole integration suite, on a machine without systemd.
#
#   start   reuses a libvirtd that answers on qemu:///system; otherwise
#           starts virtlogd -d and libvirtd -d (as root) and waits until
#           the socket answers.  Registers the holder (default: the
#           caller's pid, i.e. run.sh).
#   stop    unregisters the holder; when no live holder is left, stops the
#           daemons that this script started, by the pids it recorded, and
#           nothing else.  A daemon that was running before is left alone.
#   status  prints what is recorded.
#
# Two suites may overlap (two worktrees): each registers as a holder, and
# the last one to stop takes the daemons down.  A holder that died without
# calling stop is pruned at the next call.  State lives in $STATE_DIR
# (/run/nbdvault-libvirtd-test), guarded by flock.
set -eu

STATE_DIR=${NBDVAULT_LIBVIRTD_STATE:-/run/nbdvault-libvirtd-test}
URI=qemu:///system

usage ()
{
    echo "usage: $0 start|stop|status [--holder PID]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
cmd=$1
shift
holder=$PPID
if [ $# -ge 2 ] && [ "$1" = --holder ]; then
    holder=$2
    shift 2
fi
[ $# -eq 0 ] || usage
[[ $holder =~ ^[0-9]+$ ]] || usage

if [ "$(id -u)" != 0 ]; then
    echo "libvirtd-test: must run as root (libvirtd manages qemu:///system)" >&2
    exit 1
fi

mkdir -p "$STATE_DIR/holders"
exec 9>"$STATE_DIR/lock"
# Bounded: a stuck holder of the lock must not hang a whole suite.
flock -w 120 9 || { echo "libvirtd-test: $STATE_DIR/lock is held by another process for over 120 s" >&2; exit 1; }

# alive PID NAME: PID runs and its command is NAME (guards against reuse).
alive ()
{
    [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

answers ()
{
    timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1
}

prune_holders ()
{
    local h
    for h in "$STATE_DIR"/holders/*; do
        [ -e "$h" ] || continue
        [ -d "/proc/$(basename "$h")" ] || rm -f "$h"
    done
}

# start_daemon NAME: NAME -d, its pid (from its pid file) recorded as ours.
start_daemon ()
{
    local name=$1 pidfile=/run/$1.pid pid i
    if alive "$(cat "$pidfile" 2>/dev/null)" "$name"; then
        return 0
    fi
    rm -f "$pidfile"
    # Its stdio must not hold the caller's pipes open, nor fd 9 our lock:
    # a daemon that kept the lock would block every later call for good.
    "$name" -d </dev/null >/dev/null 2>&1 9>&-
    for i in $(seq 100); do
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if alive "$pid" "$name"; then
            echo "$pid" > "$STATE_DIR/$name.pid"
            echo "libvirtd-test: started $name (pid $pid)" >&2
            return 0
        fi
        sleep 0.1
    done
    echo "libvirtd-test: $name did not start (no live pid in $pidfile)" >&2
    exit 1
}

stop_daemon ()
{
    local name=$1 f=$STATE_DIR/$1.pid pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    rm -f "$f"
    alive "$pid" "$name" || return 0
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        alive "$pid" "$name" || { echo "libvirtd-test: stopped $name (pid $pid)" >&2; return 0; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || :
    echo "libvirtd-test: killed $name (pid $pid)" >&2
}

case $cmd in
start)
    prune_holders
    if ! answers; then
        start_daemon virtlogd
        start_daemon libvirtd
        for i in $(seq 150); do
            answers && break
            [ "$i" -lt 150 ] || { echo "libvirtd-test: libvirtd does not answer on $URI" >&2; exit 1; }
            sleep 0.1
        done
    fi
    : > "$STATE_DIR/holders/$holder"
    ;;
stop)
    rm -f "$STATE_DIR/holders/$holder"
    prune_holders
    if [ -z "$(ls -A "$STATE_DIR/holders")" ]; then
        stop_daemon libvirtd
        stop_daemon virtlogd
    fi
    ;;
status)
    prune_holders
    for n in libvirtd virtlogd; do
        if [ -f "$STATE_DIR/$n.pid" ]; then
            echo "$n: started by us, pid $(cat "$STATE_DIR/$n.pid")"
        fi
    done
    echo "holders: $(ls "$STATE_DIR/holders" | tr '\n' ' ')"
    if answers; then echo "$URI answers"; else echo "$URI does not answer"; fi
    ;;
*)
    usage
    ;;
esac
