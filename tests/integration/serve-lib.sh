# serve-lib.sh: helpers for the `nbdvault serve` tests, sourced after lib.sh.
#
# make_chain REPO N builds a chain of N restore points of a qcow2 disk
# whose size is not a multiple of 64 KiB: point 1 is a full backup of
# c1.qcow2, point K > 1 an incremental backup of cK.qcow2, an overlay of
# c(K-1).qcow2 that holds only the writes of point K and a dirty bitmap b0
# that recorded them.  The overlay chain is also the reference for
# qemu:allocation-depth: qemu-nbd -A on cK.qcow2 reports 1 for the clusters
# point K wrote, 2 for those of point K-1, ... (64 KiB clusters = cells).
# For each point it keeps:
#   ref-K.raw          the disk at point K
#   p-K.json           the backup's --json result; ${pt[K]} its point id
#   q-K.alloc          nbdinfo --map (base:allocation) of qemu-nbd at K
#   q-K.depth          nbdinfo --map=qemu:allocation-depth of qemu-nbd at K
#
# start_serve REPO [WHERE] [ARGS...] starts `nbdvault serve` in the
# background on the Unix socket $testdir/s.sock (or, when WHERE is a
# number, on TCP 127.0.0.1:WHERE) and waits until it accepts connections;
# sets $serve_pid and $sock.  stop_serve stops it with SIGTERM and fails
# the test unless it exits 0 (and removes its socket).
#
# serve_uri EXPORT: nbd+unix:///EXPORT?socket=$sock.
# check_serve ARGS: tests/integration/serve-check.py (see there).
# merged FILE: an nbdinfo --map (or hostile-client's map) as "offset length
# type" lines, adjacent extents of one type merged.

M=1048576
CELL=65536
chain_size=$((10 * M + 12800))
declare -a pt

# chain_ops K: sets ops to the qemu-io commands that make point K.
chain_ops ()
{
    case $1 in
    1) ops=("write -P 0x11 0 $((2 * M))" "write -P 0x12 $((5 * M)) $((1 * M))"
            "write -s rand.bin $((7 * M)) $((1 * M))"
            "write -P 0x13 $((chain_size - 4096)) 4096") ;;
    # Unaligned writes, write-zeroes (aligned and not), a discard, the last
    # partial cell, a write across a cell boundary, random data overwritten
    # (chunks that only point 1 uses: gc frees them once point 1 is gone).
    2) ops=("write -P 0x21 12345 100" "write -z $((5 * M)) 512k" "discard $((1 * M)) 256k"
            "write -P 0x22 $((chain_size - 100)) 100" "write -P 0x23 $((8 * M + 1000)) 70000"
            "write -z $((5 * M + 600000)) 5000" "write -P 0x24 $((7 * M)) 512k") ;;
    3) ops=("write -P 0x31 $((M + 512)) 1536" "write -z $((8 * M)) 64k"
            "write -P 0x32 $((3 * M)) $((1 * M))" "write -P 0x33 $((7 * M + 100000)) 3000") ;;
    4) ops=("write -P 0x41 0 64k" "discard $((5 * M)) $((1 * M))" "write -P 0x42 $((9 * M)) 512"
            "write -P 0x43 $((chain_size - 12800)) 512") ;;
    *) fail "chain_ops: no point $1" ;;
    esac
}

make_chain ()
{
    local repo=$1 n=$2 k img uri bitmap qbitmap
    head -c $((1 * M)) /dev/urandom > rand.bin
    for k in $(seq 1 "$n"); do
        img=c$k.qcow2
        bitmap=()
        qbitmap=()
        if [ "$k" = 1 ]; then
            qemu-img create -q -f qcow2 "$img" "$chain_size"
        else
            qemu-img create -q -f qcow2 -b "c$((k - 1)).qcow2" -F qcow2 "$img"
            qemu-img bitmap --add "$img" b0
            bitmap=(--bitmap b0)
            qbitmap=(-B b0)
        fi
        chain_ops "$k"
        local args=() o
        for o in "${ops[@]}"; do
            args+=(-c "$o")
        done
        qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null
        start_qemu_nbd q.sock -t -r -f qcow2 -x vm1 -A "${qbitmap[@]}" --shared=8 "$img"
        uri="nbd+unix:///vm1?socket=$testdir/q.sock"
        run "$NBDVAULT" backup "$uri" --repo "$repo" --disk vm1 "${bitmap[@]}" --json > "p-$k.json" ||
            fail "backup of point $k failed"
        pt[$k]=$(jget "p-$k.json" point)
        nbdinfo --map "$uri" > "q-$k.alloc"
        nbdinfo --map=qemu:allocation-depth "$uri" > "q-$k.depth"
        _kill_pid "$qemu_nbd_pid"
        qemu-img convert -O raw "$img" "ref-$k.raw"
        [ "$(stat -c %s "ref-$k.raw")" = "$chain_size" ] || fail "ref-$k.raw has the wrong size"
    done
}

# jget FILE KEY: one value of a JSON object.
jget ()
{
    "$PYTHON" -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print("null" if v is None else v)' "$1" "$2"
}

start_serve ()
{
    local repo=$1 where=${2:-} i
    shift 2 || shift $#
    local at=(--socket "$testdir/s.sock")
    sock=$testdir/s.sock
    if [[ $where =~ ^[0-9]+$ ]]; then
        at=(--listen "127.0.0.1:$where")
        sock=
    fi
    echo "+ $NBDVAULT serve --repo $repo ${at[*]} $*" >&2
    "$NBDVAULT" serve --repo "$repo" "${at[@]}" "$@" 2>>"$testdir/serve.log" &
    serve_pid=$!
    _add_pid "$serve_pid"
    if [ -n "$sock" ]; then
        for i in $(seq 100); do
            [ -S "$sock" ] && break
            kill -0 "$serve_pid" 2>/dev/null || { cat "$testdir/serve.log" >&2; fail "nbdvault serve exited"; }
            sleep 0.05
        done
        _wait_listening unix "$sock"
    else
        _wait_listening tcp "$where"
    fi
}

stop_serve ()
{
    local rc=0
    kill -TERM "$serve_pid"
    wait "$serve_pid" || rc=$?
    [ "$rc" = 0 ] || { cat "$testdir/serve.log" >&2; fail "nbdvault serve exited $rc after SIGTERM"; }
    if [ -n "$sock" ] && [ -e "$sock" ]; then
        fail "nbdvault serve left its socket $sock behind"
    fi
}

serve_uri ()
{
    echo "nbd+unix:///$1?socket=$sock"
}

check_serve ()
{
    "$PYTHON" "$(dirname "${BASH_SOURCE[0]}")/serve-check.py" "$@"
}

merged ()
{
    awk '{ if (n && $3 == t && $1 == o + l) { l += $2 } else { if (n) print o, l, t; o = $1; l = $2; t = $3; n = 1 } }
         END { if (n) print o, l, t }' "$1"
}
