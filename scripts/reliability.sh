#!/bin/bash
# The reliability matrix (docs/RELIABILITY.md): each row tries one kind of
# fault many times and counts how often nothing was lost.  A trial holds
# when the command either succeeded with every byte right or failed
# cleanly (exit 1, a message, no point recorded, earlier points intact).
#
#   scripts/reliability.sh [--short] [--out FILE.md] [ROW...]
#
# Rows: errors (nbdkit's error filter at 1%, 10%, 50% on pread and on
# extents), damage (flipped bytes, truncated, deleted and swapped packs
# found by verify), server-kill (kill -9 of qemu-nbd during a backup),
# kill (kill -9 of nbdvault during a backup, prune, gc or copy), pairs
# (two of backup, prune, gc, restore, serve at once), same-disk (twenty
# backups of one disk at once), hostile (a scripted hostile NBD server:
# tests/tools/hostile-server.py), tls (TLS refusals, as a client and as
# a server), full (a full file system at every stage of a backup),
# valgrind (memcheck of a backup, a restore and a serve session), abuse
# (our hostile client and libnbd with strict mode off against serve),
# vm-kill (kill -9 of a running VM's backup through QMP), s3 (faults
# between nbdvault and a bucket).  --short: a few trials of each (make
# check); without it the counts of the matrix (make reliability).  Exit 1
# when a trial did not hold.
set -uo pipefail
NBDVAULT=${NBDVAULT:-$(pwd)/nbdvault}
TOOLS=$(cd "$(dirname "$0")/../tests/tools" && pwd)
SHORT=
OUT=
ROWS=()
while [ $# -gt 0 ]; do
    case $1 in
        --short) SHORT=1 ;;
        --out) OUT=$2; shift ;;
        *) ROWS+=("$1") ;;
    esac
    shift
done
[ ${#ROWS[@]} -gt 0 ] || ROWS=(errors damage server-kill kill pairs same-disk hostile tls full valgrind abuse vm-kill s3)
[ -z "$OUT" ] || OUT=$(realpath -m "$OUT")
work=$(mktemp -d "${TMPDIR:-/tmp}/nbdvault-rel.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || :; done
    wait 2>/dev/null || :
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work" || exit 1
M=1048576
failed=0
table=()
# n LONG SHORT: the trials of a row.
n() { if [ -n "$SHORT" ]; then echo "$2"; else echo "$1"; fi; }
# record WHAT TRIED HELD RERUN
record() {
    table+=("| $1 | $2 | $3 | \`$4\` |")
    [ "$2" = "$3" ] || failed=1
    printf '%s: %s of %s held\n' "$1" "$3" "$2" >&2
}
points() { "$NBDVAULT" list --repo "$1" --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0; }
note() { printf '  trial %s: %s\n' "$1" "$2" >> "$work/trials.log"; }

# ---- nbdkit's error filter --------------------------------------------------------

row_errors() {
    local data=$work/data.raw kind rate i tried held ok rc
    head -c $((12 * M)) /dev/urandom > "$data"
    yes "reliability matrix text line" | head -c $((12 * M)) >> "$data"
    for kind in pread extents; do
        for rate in 1 10 50; do
            tried=0 held=0 ok=0
            for i in $(seq "$(n 20 2)"); do
                rm -f "$work/e.sock"
                nbdkit -U "$work/e.sock" -P "$work/e.pid" --filter=error file "$data" \
                    "error-$kind-rate=$rate%" error=EIO
                local repo=$work/repo-e
                rm -rf "$repo"
                "$NBDVAULT" init --repo "$repo" > /dev/null
                rc=0
                "$NBDVAULT" backup "nbd+unix:///?socket=$work/e.sock" --repo "$repo" --disk d \
                    > "$work/out" 2> "$work/err" || rc=$?
                kill "$(cat "$work/e.pid")" 2>/dev/null
                tried=$((tried + 1))
                if [ $rc = 0 ]; then
                    # A success must restore every byte.
                    if "$NBDVAULT" restore --repo "$repo" --disk d --output "$work/r.raw" > /dev/null 2>&1 &&
                        cmp -s "$work/r.raw" "$data"; then
                        held=$((held + 1)) ok=$((ok + 1))
                    else
                        note "$kind $rate% #$i" "the backup succeeded but does not restore the data"
                    fi
                elif [ $rc = 1 ] && [ -s "$work/err" ] && [ "$(points "$repo")" = 0 ]; then
                    held=$((held + 1))
                else
                    note "$kind $rate% #$i" "exit $rc, $(points "$repo") point(s): $(head -c 300 "$work/err")"
                fi
                rm -f "$work/r.raw"
            done
            record "nbdkit error filter, $rate% of ${kind} calls fail: a backup succeeds only with every byte ($ok succeeded, $((held - ok)) failed cleanly)" \
                "$tried" "$held" "scripts/reliability.sh errors"
        done
    done
}

# ---- Injected damage ----------------------------------------------------------------

# A repository of several points spread over several packs.
damage_repo() {
    local i
    "$NBDVAULT" init --repo "$work/base" > /dev/null
    for i in 1 2 3 4; do
        head -c $((3 * M)) /dev/urandom > "$work/d$i.raw"
        yes "point $i of the damage row" | head -c $((5 * M)) >> "$work/d$i.raw"
        rm -f "$work/q.sock"
        qemu-nbd --fork --pid-file="$work/q.pid" -k "$work/q.sock" -t -r -f raw "$work/d$i.raw"
        "$NBDVAULT" backup "nbd+unix:///?socket=$work/q.sock" --repo "$work/base" --disk "d$i" > /dev/null
        kill "$(cat "$work/q.pid")"
    done
}

# damage_trial KIND N: one damaged copy, verify must find it (exit 1, the pack named).
damage_trial() {
    local kind=$1 i=$2 repo=$work/dmg
    rm -rf "$repo"
    cp -a "$work/base" "$repo"
    mapfile -t packs < <(find "$repo/packs" -name '*.pack' | sort)
    local p=${packs[$((RANDOM % ${#packs[@]}))]} size
    size=$(stat -c %s "$p")
    case $kind in
        flip) python3 -c 'import random,sys; f=open(sys.argv[1],"r+b"); o=random.randrange(int(sys.argv[2])); f.seek(o); b=f.read(1); f.seek(o); f.write(bytes([b[0]^(1<<random.randrange(8))]))' "$p" "$size" ;;
        truncate) truncate -s $((RANDOM * size / 32768)) "$p" ;;
        delete) rm -f "$p" ;;
        swap) local q=${packs[$(( (RANDOM % (${#packs[@]} - 1) + 1 + $(printf '%s\n' "${packs[@]}" | grep -nxF "$p" | cut -d: -f1) - 1) % ${#packs[@]}))]}
              mv "$p" "$work/swap.tmp"; mv "$q" "$p"; mv "$work/swap.tmp" "$q" ;;
    esac
    local rc=0
    "$NBDVAULT" verify --repo "$repo" > "$work/v.out" 2>&1 || rc=$?
    if [ $rc = 1 ] && grep -q "damaged: .*$(basename "$p")" "$work/v.out"; then
        return 0
    fi
    note "$kind #$i" "verify exit $rc: $(head -c 300 "$work/v.out")"
    return 1
}

row_damage() {
    damage_repo
    local kind count tried held i
    for kind in flip truncate delete swap; do
        case $kind in flip) count=$(n 100 4) ;; *) count=$(n 10 2) ;; esac
        tried=0 held=0
        for i in $(seq "$count"); do
            tried=$((tried + 1))
            damage_trial "$kind" "$i" && held=$((held + 1))
        done
        case $kind in
            flip) what="one flipped bit in a pack" ;;
            truncate) what="a pack truncated" ;;
            delete) what="a pack deleted" ;;
            swap) what="two packs swapped" ;;
        esac
        record "$what: found by verify, the pack named" "$tried" "$held" "scripts/reliability.sh damage"
    done
}

# ---- kill -9 of the NBD server -------------------------------------------------------

row_server_kill() {
    local data=$work/sk.raw tried=0 held=0 ok=0 i rc repo=$work/repo-sk
    head -c $((24 * M)) /dev/urandom > "$data"
    yes "server killed" | head -c $((24 * M)) >> "$data"
    rm -rf "$repo"
    "$NBDVAULT" init --repo "$repo" > /dev/null
    for i in $(seq "$(n 50 3)"); do
        rm -f "$work/s.sock"
        qemu-nbd --fork --pid-file="$work/s.pid" -k "$work/s.sock" -t -r -f raw --shared=8 "$data"
        local before
        before=$(points "$repo")
        rc=0
        "$NBDVAULT" backup "nbd+unix:///?socket=$work/s.sock" --repo "$repo" --disk d --full \
            > /dev/null 2> "$work/err" &
        local bk=$!
        sleep "0.$(printf '%03d' $((RANDOM % 250)))"
        kill -9 "$(cat "$work/s.pid")" 2>/dev/null
        wait $bk || rc=$?
        tried=$((tried + 1))
        if [ $rc = 0 ] && [ "$(points "$repo")" = $((before + 1)) ] &&
            "$NBDVAULT" restore --repo "$repo" --disk d --output "$work/r.raw" > /dev/null 2>&1 &&
            cmp -s "$work/r.raw" "$data"; then
            held=$((held + 1)) ok=$((ok + 1))
        elif [ $rc = 1 ] && [ -s "$work/err" ] && [ "$(points "$repo")" = "$before" ]; then
            held=$((held + 1))
        else
            note "server kill #$i" "exit $rc, points $before -> $(points "$repo"): $(head -c 300 "$work/err")"
        fi
        rm -f "$work/r.raw"
    done
    "$NBDVAULT" verify --repo "$repo" > /dev/null 2>&1 || { note "server kill" "verify failed afterwards"; held=$((held - 1)); }
    record "kill -9 of qemu-nbd at a random moment of a backup: a clean error and no point, or a whole point ($ok finished first)" \
        "$tried" "$held" "scripts/reliability.sh server-kill"
}

# ---- kill -9 of nbdvault ---------------------------------------------------------------

# The disks of the kill row: three raw files served by qemu-nbd.
kill_setup() {
    local d
    for d in a b c; do
        head -c $((6 * M)) /dev/urandom > "$work/k$d.raw"
        yes "disk $d" | head -c $((10 * M)) >> "$work/k$d.raw"
        rm -f "$work/k$d.sock"
        qemu-nbd --fork --pid-file="$work/k$d.pid" -k "$work/k$d.sock" -t -r -f raw --shared=8 "$work/k$d.raw"
        pids+=("$(cat "$work/k$d.pid")")
    done
    "$NBDVAULT" init --repo "$work/kr" > /dev/null
    "$NBDVAULT" init --repo "$work/kt" > /dev/null
    for d in a b c; do
        "$NBDVAULT" backup "nbd+unix:///?socket=$work/k$d.sock" --repo "$work/kr" --disk "$d" --full > /dev/null
    done
}

# The command of a kill trial (its source changes between points: new
# random bytes at a random place, served from the start again).
kill_cmd() {
    case $1 in
        backup) echo "'$NBDVAULT' backup 'nbd+unix:///?socket=$work/k$2.sock' --repo '$work/kr' --disk $2 --full" ;;
        prune) echo "'$NBDVAULT' prune --repo '$work/kr' --disk $2 --keep-last 2" ;;
        gc) echo "'$NBDVAULT' gc --repo '$work/kr'" ;;
        copy) echo "'$NBDVAULT' copy --repo '$work/kr' --to '$work/kt'" ;;
    esac
}

# Whether both repositories are whole: SQLite's check, verify, and the
# newest point of every disk restoring its disk's bytes.
kill_check() {
    local repo d
    for repo in "$work/kr" "$work/kt"; do
        [ "$(sqlite3 "$repo/catalog.db" 'PRAGMA integrity_check' 2>&1)" = ok ] || { echo "integrity_check of $repo"; return 1; }
        "$NBDVAULT" verify --repo "$repo" > "$work/kv.out" 2>&1 || { echo "verify of $repo: $(head -c 200 "$work/kv.out")"; return 1; }
    done
    for d in a b c; do
        "$NBDVAULT" restore --repo "$work/kr" --disk "$d" --output "$work/kr.raw" > /dev/null 2>&1 &&
            cmp -s "$work/kr.raw" "$work/k$d.raw" || { echo "the newest point of $d does not restore its bytes"; return 1; }
        rm -f "$work/kr.raw"
    done
}

row_kill() {
    kill_setup
    local total=$(n 200 8) tried=0 held=0 i op d cmd why
    local ops=(backup prune gc copy)
    for i in $(seq "$total"); do
        op=${ops[$((RANDOM % 4))]}
        d=$(printf 'abc' | cut -c$((RANDOM % 3 + 1)))
        cmd=$(kill_cmd "$op" "$d")
        bash -c "exec $cmd" > /dev/null 2>&1 &
        local pid=$!
        sleep "0.$(printf '%03d' $((RANDOM % 300)))"
        kill -9 $pid 2>/dev/null
        wait $pid 2>/dev/null
        tried=$((tried + 1))
        # The next run of the same command succeeds, and everything is whole.
        if ! bash -c "$cmd" > "$work/again" 2>&1; then
            note "kill $op #$i" "the next $op failed: $(head -c 300 "$work/again")"
        elif ! why=$(kill_check); then
            note "kill $op #$i" "$why"
        else
            held=$((held + 1))
        fi
    done
    record "kill -9 of nbdvault at a random moment of a backup, prune, gc or copy: integrity_check, verify and every disk's newest point whole, the next run succeeds" \
        "$tried" "$held" "scripts/reliability.sh kill"
}

# ---- Concurrency ----------------------------------------------------------------------

# One operation of the pairs row, run to its end: 0 when it succeeded or
# was refused cleanly (exit 1 naming the lock's holder), its output in
# $work/pair-$2.out.
pair_op() {
    local op=$1 tag=$2 d=$3 out=$work/pair-$2.out rc=0
    case $op in
        backup) "$NBDVAULT" backup "nbd+unix:///?socket=$work/k$d.sock" --repo "$work/kr" --disk "$d" --full > "$out" 2>&1 || rc=$? ;;
        prune) "$NBDVAULT" prune --repo "$work/kr" --disk "$d" --keep-last 2 > "$out" 2>&1 || rc=$? ;;
        gc) "$NBDVAULT" gc --repo "$work/kr" > "$out" 2>&1 || rc=$? ;;
        restore)
            "$NBDVAULT" restore --repo "$work/kr" --disk "$d" --output "$work/pair-$tag.raw" > "$out" 2>&1 || rc=$?
            [ $rc != 0 ] || cmp -s "$work/pair-$tag.raw" "$work/k$d.raw" || { echo "restore wrote other bytes" >> "$out"; rc=9; }
            rm -f "$work/pair-$tag.raw" ;;
        serve)
            rm -f "$work/pair-$tag.sock"
            "$NBDVAULT" serve --repo "$work/kr" --socket "$work/pair-$tag.sock" > "$out" 2>&1 &
            local sp=$! i
            for i in $(seq 100); do [ -S "$work/pair-$tag.sock" ] && break; sleep 0.02; done
            nbdcopy "nbd+unix:///$d?socket=$work/pair-$tag.sock" "$work/pair-$tag.raw" >> "$out" 2>&1 || rc=$?
            [ $rc != 0 ] || cmp -s "$work/pair-$tag.raw" "$work/k$d.raw" || { echo "serve gave other bytes" >> "$out"; rc=9; }
            kill $sp 2>/dev/null
            wait $sp 2>/dev/null
            rm -f "$work/pair-$tag.raw" ;;
    esac
    [ $rc = 0 ] || { [ $rc = 1 ] && grep -q "locked by\|is locked\|a restore\|waiting" "$out"; }
}

row_pairs() {
    [ -e "$work/kr" ] || kill_setup
    local ops=(backup prune gc restore serve) tried=0 held=0 a b k i why
    local per=$(n 4 1)
    for a in 0 1 2 3 4; do
        for b in $(seq "$a" 4); do
            for k in $(seq "$per"); do
                local da db
                da=$(printf 'abc' | cut -c$((RANDOM % 3 + 1)))
                db=$(printf 'abc' | cut -c$((RANDOM % 3 + 1)))
                pair_op "${ops[$a]}" A "$da" & local pa=$!
                pair_op "${ops[$b]}" B "$db" & local pb=$!
                local ra=0 rb=0
                wait $pa || ra=1
                wait $pb || rb=1
                tried=$((tried + 1))
                if [ $ra != 0 ] || [ $rb != 0 ]; then
                    note "pair ${ops[$a]}+${ops[$b]}" "$(head -c 200 "$work/pair-A.out") / $(head -c 200 "$work/pair-B.out")"
                elif ! why=$(kill_check); then
                    note "pair ${ops[$a]}+${ops[$b]}" "$why"
                else
                    held=$((held + 1))
                fi
            done
        done
    done
    record "two of backup, prune, gc, restore and serve at once, every pair ($per each): each succeeds with the right bytes or is refused naming the other, nothing lost" \
        "$tried" "$held" "scripts/reliability.sh pairs"
}

# Twenty backups of one disk at once, from a slow source: one runs, the
# others are refused naming it.
row_same_disk() {
    local i n=$(n 20 5) ok=0 refused=0 other=0 repo=$work/repo-same
    head -c $((2 * M)) /dev/urandom > "$work/same.raw"
    rm -f "$work/slow.sock"
    nbdkit -U "$work/slow.sock" -P "$work/slow.pid" --filter=delay file "$work/same.raw" rdelay=100ms
    pids+=("$(cat "$work/slow.pid")")
    rm -rf "$repo"
    "$NBDVAULT" init --repo "$repo" > /dev/null
    local bp=()
    for i in $(seq "$n"); do
        "$NBDVAULT" backup "nbd+unix:///?socket=$work/slow.sock" --repo "$repo" --disk same --full \
            > "$work/same-$i.out" 2>&1 &
        bp+=("$!")
    done
    for i in $(seq "$n"); do
        local rc=0
        wait "${bp[$((i - 1))]}" || rc=$?
        if [ $rc = 0 ]; then
            ok=$((ok + 1))
        elif [ $rc = 1 ] && grep -q "locked by\|is locked" "$work/same-$i.out"; then
            refused=$((refused + 1))
        else
            other=$((other + 1))
            note "same disk #$i" "exit $rc: $(head -c 200 "$work/same-$i.out")"
        fi
    done
    local held=$((ok == 1 ? refused + 1 : refused))
    [ "$(points "$repo")" = "$ok" ] || { note "same disk" "$(points "$repo") points for $ok successes"; held=0; }
    "$NBDVAULT" restore --repo "$repo" --disk same --output "$work/same-r.raw" > /dev/null 2>&1 &&
        cmp -s "$work/same-r.raw" "$work/same.raw" || { note "same disk" "the point does not restore"; held=0; }
    record "$n backups of one disk at once: one runs, $((n - 1)) refused naming the holder (got $ok ran, $refused refused)" \
        "$n" "$held" "scripts/reliability.sh same-disk"
}

# ---- A hostile NBD server (tests/tools/hostile-server.py) ----------------------------

# hostile_trial SCENARIO EXPECT: one backup from the scripted server.
hostile_trial() {
    local s=$1 expect=$2 repo=$work/repo-h rc=0 sock=$work/h.sock uri
    rm -rf "$repo" "$sock"
    "$NBDVAULT" init --repo "$repo" > /dev/null
    python3 "$TOOLS/hostile-server.py" "$sock" "$work/h.raw" "$s" & local sp=$!
    local i
    for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.02; done
    uri="nbd+unix:///?socket=$sock"
    case $s in *-tls) uri="nbds+unix://alice@/?socket=$sock&tls-psk-file=$work/h.psk" ;; esac
    timeout 60 "$NBDVAULT" backup "$uri" --repo "$repo" --disk h --io-timeout 3 > /dev/null 2> "$work/h.err" || rc=$?
    kill $sp 2>/dev/null
    wait $sp 2>/dev/null
    local np
    np=$(points "$repo")
    if [ $rc = 0 ] && [ "$expect" != fail ] && [ "$np" = 1 ] &&
        "$NBDVAULT" restore --repo "$repo" --disk h --output "$work/h-r.raw" > /dev/null 2>&1 &&
        cmp -s "$work/h-r.raw" "$work/h.raw"; then
        rm -f "$work/h-r.raw"
        return 0
    fi
    rm -f "$work/h-r.raw"
    if [ $rc = 1 ] && [ "$expect" != ok ] && [ -s "$work/h.err" ] && [ "$np" = 0 ]; then
        return 0
    fi
    note "hostile server $s" "expected $expect, got exit $rc and $np point(s): $(head -c 300 "$work/h.err")"
    return 1
}

row_hostile() {
    head -c $((3 * M)) /dev/urandom > "$work/h.raw"
    printf 'alice:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$work/h.psk"
    # --short: the control and a few of each kind; otherwise every scenario.
    local pick='.'
    [ -z "$SHORT" ] || pick='^(ok|oldstyle-tls|opt-len-huge|size-2p63|info-name-oversize|read-outside|read-wrap@ext|read-unknown-cookie|bs-wrap@ext|bs-zero-length|cut-read-24|cut-bs-12@ext|stall-read|stall-mid-reply@ext) '
    local kind tried held failed_clean s expect
    for kind in handshake transmission; do
        tried=0 held=0
        while read -r s expect _; do
            case $s in read-*|bs-*|stall-*|cut-read-*|cut-bs-*|reply-*) [ $kind = transmission ] || continue ;;
                       *) [ $kind = handshake ] || continue ;; esac
            tried=$((tried + 1))
            hostile_trial "$s" "$expect" && held=$((held + 1))
        done < <(python3 "$TOOLS/hostile-server.py" --list | grep -E "$pick")
        if [ $kind = handshake ]; then
            what="a hostile server's handshake (bad greetings, oldstyle or no STARTTLS under nbds://, option replies of 0xffffffff bytes, oversize names, export sizes 2^63 and 2^64-1, unknown flags, cuts every 3 bytes)"
        else
            what="a hostile server's replies, compact and extended (block status past the request, wrapping 2^64, extent length 0, data outside the request or wrapping, unknown cookies and types, error chunks, cuts inside every reply, a server that stops answering)"
        fi
        record "$what: a clean error and no point, or every byte right" "$tried" "$held" "scripts/reliability.sh hostile"
    done
}

# ---- TLS refusals ------------------------------------------------------------------

# tls_trial NAME URI PATTERN: a backup that must be refused before it reads
# anything: exit 1, the error matching PATTERN, no point.
tls_trial() {
    local repo=$work/repo-t rc=0
    rm -rf "$repo"
    "$NBDVAULT" init --repo "$repo" > /dev/null
    timeout 60 "$NBDVAULT" backup "$2" --repo "$repo" --disk t > /dev/null 2> "$work/t.err" || rc=$?
    if [ $rc = 1 ] && grep -Eq "$3" "$work/t.err" && [ "$(points "$repo")" = 0 ]; then
        return 0
    fi
    note "tls $1" "exit $rc, $(points "$repo") point(s): $(head -c 300 "$work/t.err")"
    return 1
}

# A plaintext client of a TLS-only `serve`: refused, not a byte of the point.
tls_serve_trial() {
    local rc=0
    rm -f "$work/ts.raw"
    nbdcopy "nbd+unix:///t?socket=$work/ts.sock" "$work/ts.raw" > /dev/null 2> "$work/t.err" || rc=$?
    if [ $rc != 0 ] && { [ ! -e "$work/ts.raw" ] || [ ! -s "$work/ts.raw" ]; }; then
        return 0
    fi
    note "tls serve" "a plaintext nbdcopy got exit $rc and $(stat -c %s "$work/ts.raw" 2>/dev/null) bytes"
    return 1
}

row_tls() {
    . "$TOOLS/tls-creds.sh"
    make_x509 "$work/x" || return 1
    make_psk "$work/psk" alice
    make_psk "$work/psk-wrong" alice
    head -c $((2 * M)) /dev/urandom > "$work/t.raw"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    local port2
    port2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    rm -f "$work/tp.sock" "$work/tq.sock"
    qemu-nbd --fork --pid-file="$work/tx.pid" -b 127.0.0.1 -p "$port" -t -r -f raw \
        --object tls-creds-x509,id=t1,endpoint=server,dir="$work/x/server",verify-peer=no --tls-creds t1 "$work/t.raw"
    pids+=("$(cat "$work/tx.pid")")
    qemu-nbd --fork --pid-file="$work/tv.pid" -b 127.0.0.1 -p "$port2" -t -r -f raw \
        --object tls-creds-x509,id=t2,endpoint=server,dir="$work/x/server",verify-peer=yes --tls-creds t2 "$work/t.raw"
    pids+=("$(cat "$work/tv.pid")")
    qemu-nbd --fork --pid-file="$work/tp.pid" -k "$work/tp.sock" -t -r -f raw \
        --object tls-creds-psk,id=t3,endpoint=server,dir="$work/psk" --tls-creds t3 "$work/t.raw"
    pids+=("$(cat "$work/tp.pid")")
    qemu-nbd --fork --pid-file="$work/tq.pid" -k "$work/tq.sock" -t -r -f raw "$work/t.raw"
    pids+=("$(cat "$work/tq.pid")")
    python3 "$TOOLS/hostile-server.py" "$work/th.sock" "$work/t.raw" starttls-unsup-tls & pids+=("$!")
    # The control: the right credentials back up every byte.
    "$NBDVAULT" init --repo "$work/repo-tok" > /dev/null
    "$NBDVAULT" backup "nbds://localhost:$port/?tls-certificates=$work/x/ca-only" --repo "$work/repo-tok" --disk t > /dev/null &&
        "$NBDVAULT" restore --repo "$work/repo-tok" --disk t --output "$work/tok.raw" > /dev/null &&
        cmp -s "$work/tok.raw" "$work/t.raw" || { note "tls control" "the right credentials did not back up the disk"; failed=1; }
    rm -f "$work/ts.sock"
    "$NBDVAULT" serve --repo "$work/repo-tok" --socket "$work/ts.sock" --tls-psk-file "$work/psk/keys.psk" > /dev/null 2>&1 &
    pids+=("$!")
    local i
    for i in $(seq 100); do [ -S "$work/ts.sock" ] && [ -S "$work/th.sock" ] && break; sleep 0.02; done
    local psk=$work/psk/keys.psk tried=0 held=0 k c
    local cases=(
        "plaintext|nbds+unix://alice@/?socket=$work/tq.sock&tls-psk-file=$psk|TLS is required"
        "wrong-ca|nbds://localhost:$port/?tls-certificates=$work/x/other-ca|issuer is unknown|not trusted"
        "wrong-host|nbds://127.0.0.1:$port/?tls-certificates=$work/x/ca-only|not valid for host name"
        "wrong-psk|nbds+unix://alice@/?socket=$work/tp.sock&tls-psk-file=$work/psk-wrong/keys.psk|TLS|closed"
        "no-client-cert|nbds://localhost:$port2/?tls-certificates=$work/x/ca-only|client certificate"
        "starttls-refused|nbds+unix://alice@/?socket=$work/th.sock&tls-psk-file=$psk|TLS is required"
    )
    for c in "${cases[@]}"; do
        for k in $(seq "$(n 10 1)"); do
            tried=$((tried + 1))
            IFS='|' read -r name uri pat <<< "$c"
            tls_trial "$name" "$uri" "$pat" && held=$((held + 1))
        done
    done
    record "TLS: nbds:// to a plaintext server, a wrong CA, a wrong host name, a wrong PSK, no client certificate for a verifying server, STARTTLS refused: refused before any read, no point" \
        "$tried" "$held" "scripts/reliability.sh tls"
    tried=0 held=0
    for k in $(seq "$(n 10 1)"); do
        tried=$((tried + 1))
        tls_serve_trial && held=$((held + 1))
    done
    record "a plaintext client of a TLS-only serve: refused, no data" "$tried" "$held" "scripts/reliability.sh tls"
}

# ---- A full file system ----------------------------------------------------------------

# full_trial SIZE_KIB I: a repository on a tmpfs of SIZE_KIB holding one
# small point, then a backup of 8 MiB of random data that fills it at
# whatever stage SIZE_KIB lets it reach.  Holds when that backup either
# succeeds with every byte or fails cleanly (exit 1 naming the lack of
# space, no new point), the first point still restores, verify passes,
# and gc gives back what the failed backup wrote.
full_trial() {
    local kib=$1 i=$2 mnt=$work/full rc=0
    mkdir -p "$mnt"
    mount -t tmpfs -o "size=${kib}k" tmpfs "$mnt" || return 2
    local repo=$mnt/repo why=
    "$NBDVAULT" init --repo "$repo" > /dev/null 2>&1 &&
        "$NBDVAULT" backup "nbd+unix:///?socket=$work/fs.sock" --repo "$repo" --disk small > /dev/null 2>&1 ||
        { umount "$mnt"; return 3; }
    local used0
    used0=$(df -k --output=used "$mnt" | tail -1)
    "$NBDVAULT" backup "nbd+unix:///?socket=$work/fb.sock" --repo "$repo" --disk big > /dev/null 2> "$work/f.err" || rc=$?
    if [ $rc = 0 ]; then
        "$NBDVAULT" restore --repo "$repo" --disk big --output "$work/fb-r.raw" > /dev/null 2>&1 &&
            cmp -s "$work/fb-r.raw" "$work/fb.raw" || why="the backup succeeded but does not restore"
        rm -f "$work/fb-r.raw"
    elif [ $rc != 1 ] || ! grep -q "No space left\|ENOSPC\|disk is full\|database or disk is full" "$work/f.err"; then
        why="exit $rc: $(head -c 200 "$work/f.err")"
    elif [ "$(points "$repo")" != 1 ]; then
        why="a failed backup left $(points "$repo") points"
    else
        "$NBDVAULT" gc --repo "$repo" > "$work/f.gc" 2>&1 || why="gc after it failed: $(head -c 200 "$work/f.gc")"
        local used1
        used1=$(df -k --output=used "$mnt" | tail -1)
        [ -n "$why" ] || [ "$used1" -le $((used0 + 256)) ] || why="gc left $((used1 - used0)) KiB of the failed backup"
    fi
    if [ -z "$why" ]; then
        "$NBDVAULT" restore --repo "$repo" --disk small --output "$work/fs-r.raw" > /dev/null 2>&1 &&
            cmp -s "$work/fs-r.raw" "$work/fs.raw" || why="the earlier point does not restore"
        rm -f "$work/fs-r.raw"
        [ -n "$why" ] || "$NBDVAULT" verify --repo "$repo" > /dev/null 2>&1 || why="verify fails"
    fi
    umount "$mnt"
    full_rc=$rc
    [ -z "$why" ] && return 0
    note "full file system ${kib} KiB #$i" "$why"
    return 1
}

row_full() {
    head -c $((256 * 1024)) /dev/urandom > "$work/fs.raw"
    head -c $((8 * M)) /dev/urandom > "$work/fb.raw"
    local f
    for f in fs fb; do
        rm -f "$work/$f.sock"
        qemu-nbd --fork --pid-file="$work/$f.pid" -k "$work/$f.sock" -t -r -f raw --shared=8 "$work/$f.raw"
        pids+=("$(cat "$work/$f.pid")")
    done
    # From a file system the first point barely fits in to one the second
    # fits in: the space runs out in the pack writes, the catalog's
    # transactions, the WAL and the point's commit.
    local count=$(n 40 4) tried=0 held=0 ok=0 i kib r
    for i in $(seq "$count"); do
        kib=$((1200 + (i - 1) * 9000 / count + RANDOM % 64))
        r=0
        full_trial "$kib" "$i" || r=$?
        [ $r != 2 ] || { echo "reliability: cannot mount a tmpfs here: the full file system row is not run" >&2; return 0; }
        [ $r != 3 ] && tried=$((tried + 1))
        [ $r = 0 ] && held=$((held + 1))
        [ $r != 0 ] || [ "$full_rc" != 0 ] || ok=$((ok + 1))
    done
    record "a full file system (tmpfs of 1.2 to 10 MiB) at every stage of a backup: a clean error naming it, no point, the earlier point whole, gc gives the space back; or every byte ($ok fitted)" \
        "$tried" "$held" "scripts/reliability.sh full"
}

# ---- valgrind --------------------------------------------------------------------------

# vg NAME CMD...: CMD under memcheck; holds with no error and no leak.
vg() {
    local name=$1 rc=0
    shift
    valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --show-leak-kinds=definite,indirect --log-file="$work/vg-$name.log" "$@" > /dev/null 2>&1 || rc=$?
    if [ $rc = 0 ] && [ ! -s "$work/vg-$name.log" ]; then
        return 0
    fi
    note "valgrind $name" "exit $rc: $(grep -m3 -E 'ERROR SUMMARY|definitely|indirectly|Invalid|uninitialised' "$work/vg-$name.log" | tr '\n' ' ')"
    return 1
}

row_valgrind() {
    if ldd "$NBDVAULT" 2>/dev/null | grep -q 'libasan\|libubsan'; then
        echo "reliability: $NBDVAULT is built with sanitizers: the valgrind row is not run" >&2
        return 0
    fi
    local repo=$work/repo-vg tried=0 held=0 k
    head -c $((6 * M)) /dev/urandom > "$work/vg.raw"
    yes "valgrind row" | head -c $((6 * M)) >> "$work/vg.raw"
    rm -f "$work/vg.sock"
    qemu-nbd --fork --pid-file="$work/vg.pid" -k "$work/vg.sock" -t -r -f raw --shared=8 "$work/vg.raw"
    pids+=("$(cat "$work/vg.pid")")
    "$NBDVAULT" init --repo "$repo" > /dev/null
    for k in $(seq "$(n 3 1)"); do
        tried=$((tried + 3))
        vg "backup-$k" "$NBDVAULT" backup "nbd+unix:///?socket=$work/vg.sock" --repo "$repo" --disk vg --full &&
            held=$((held + 1))
        rm -f "$work/vg-r.raw"
        vg "restore-$k" "$NBDVAULT" restore --repo "$repo" --disk vg --output "$work/vg-r.raw" &&
            cmp -s "$work/vg-r.raw" "$work/vg.raw" && held=$((held + 1))
        # A serve session: nbdinfo and nbdcopy read the point, then SIGTERM.
        rm -f "$work/vgs.sock" "$work/vgs.raw"
        vg "serve-$k" "$NBDVAULT" serve --repo "$repo" --socket "$work/vgs.sock" &
        local sp=$! i
        for i in $(seq 300); do [ -S "$work/vgs.sock" ] && break; sleep 0.05; done
        nbdinfo "nbd+unix:///vg?socket=$work/vgs.sock" > /dev/null 2>&1
        nbdcopy "nbd+unix:///vg?socket=$work/vgs.sock" "$work/vgs.raw" 2> /dev/null
        pkill -TERM -f "valgrind.*--socket $work/vgs.sock" 2>/dev/null
        local ok=1
        wait $sp || ok=0
        cmp -s "$work/vgs.raw" "$work/vg.raw" || { ok=0; note "valgrind serve-$k" "nbdcopy read other bytes"; }
        held=$((held + ok))
    done
    record "valgrind memcheck of a backup, a restore and a serve session (nbdinfo, nbdcopy, SIGTERM): no error, no definite or indirect leak, every byte right" \
        "$tried" "$held" "scripts/reliability.sh valgrind"
}

# ---- Server abuse ------------------------------------------------------------------------

# Whether `serve` still serves the point right to a well-behaved client.
abuse_served() {
    rm -f "$work/ab-r.raw"
    timeout 60 nbdcopy "nbd+unix:///ab?socket=$work/ab.sock" "$work/ab-r.raw" 2> /dev/null &&
        cmp -s "$work/ab-r.raw" "$work/ab.raw"
}

row_abuse() {
    local hc=${HOSTILE_CLIENT:-$TOOLS/../../build/tests/hostile-client}
    [ -x "$hc" ] || { echo "reliability: no hostile client at $hc (make reliability builds it)" >&2; failed=1; return; }
    local repo=$work/repo-ab tried=0 held=0 k a
    head -c $((4 * M)) /dev/urandom > "$work/ab.raw"
    rm -f "$work/abq.sock" "$work/ab.sock"
    qemu-nbd --fork --pid-file="$work/abq.pid" -k "$work/abq.sock" -t -r -f raw "$work/ab.raw"
    pids+=("$(cat "$work/abq.pid")")
    "$NBDVAULT" init --repo "$repo" > /dev/null
    "$NBDVAULT" backup "nbd+unix:///?socket=$work/abq.sock" --repo "$repo" --disk ab > /dev/null
    "$NBDVAULT" serve --repo "$repo" --socket "$work/ab.sock" > "$work/ab-serve.log" 2>&1 &
    local sp=$!
    pids+=("$sp")
    for k in $(seq 100); do [ -S "$work/ab.sock" ] && break; sleep 0.02; done
    local attacks
    mapfile -t attacks < <("$hc" list)
    for k in $(seq "$(n 10 1)"); do
        for a in "${attacks[@]}"; do
            tried=$((tried + 1))
            if ! timeout 60 "$hc" "$a" "$work/ab.sock" ab > "$work/ab.out" 2>&1; then
                note "abuse $a #$k" "the server's answer: $(tail -c 200 "$work/ab.out")"
            elif ! kill -0 $sp 2>/dev/null; then
                note "abuse $a #$k" "serve died: $(tail -c 200 "$work/ab-serve.log")"
                return
            elif [ $((tried % 8)) = 0 ] && ! abuse_served; then
                note "abuse $a #$k" "a well-behaved client is no longer served"
            else
                held=$((held + 1))
            fi
        done
        # 200 sockets at once, idle: a real client still gets in.
        tried=$((tried + 1))
        "$hc" idle "$work/ab.sock" 200 3 > /dev/null 2>&1 &
        local ip=$!
        sleep 1
        if abuse_served; then held=$((held + 1)); else note "abuse idle #$k" "200 idle sockets kept a real client out"; fi
        wait $ip 2>/dev/null
    done
    abuse_served || { note "abuse" "not served right after the attacks"; held=$((held - 1)); }
    record "server abuse (our hostile client, no strictness): oversize names and options, requests before GO, garbage, reads, writes and block status out of range or over 32 MiB, unaligned, cut mid-request, 200 idle sockets: the answer NBD-NOTES §9 asks for, serve alive, others served right" \
        "$tried" "$held" "scripts/reliability.sh abuse"
    abuse_libnbd "$repo"
}

# libnbd with its strict mode off (tests/tools/abuse-libnbd.py) against a
# 5 GiB export with 70 MiB of data: a real client sending what a
# conforming one never would.
abuse_libnbd() {
    local repo=$1 tried=0 held=0 k line sp
    truncate -s 5G "$work/abig.raw"
    head -c $((70 * M)) /dev/urandom | dd of="$work/abig.raw" conv=notrunc status=none
    head -c $M /dev/urandom | dd of="$work/abig.raw" bs=1M seek=4600 conv=notrunc status=none
    qemu-nbd --fork --pid-file="$work/abb.pid" -k "$work/abb.sock" -t -r -f raw "$work/abig.raw"
    pids+=("$(cat "$work/abb.pid")")
    "$NBDVAULT" backup "nbd+unix:///?socket=$work/abb.sock" --repo "$repo" --disk abig > /dev/null
    rm -f "$work/abl.sock"
    "$NBDVAULT" serve --repo "$repo" --socket "$work/abl.sock" > "$work/abl-serve.log" 2>&1 &
    sp=$!
    pids+=("$sp")
    for k in $(seq 100); do [ -S "$work/abl.sock" ] && break; sleep 0.02; done
    for k in $(seq "$(n 10 1)"); do
        timeout 300 /usr/bin/python3 "$TOOLS/abuse-libnbd.py" "nbd+unix:///abig?socket=$work/abl.sock" \
            "$work/abig.raw" > "$work/abl.out" 2>&1
        while read -r line; do
            case $line in
                ok\ *) tried=$((tried + 1)) held=$((held + 1)) ;;
                FAIL\ *) tried=$((tried + 1)); note "abuse libnbd #$k" "$line" ;;
            esac
        done < "$work/abl.out"
        grep -Eq '^(ok|FAIL) many-connections' "$work/abl.out" ||
            { tried=$((tried + 1)); note "abuse libnbd #$k" "the client did not finish: $(tail -c 300 "$work/abl.out")"; }
        kill -0 "$sp" 2>/dev/null || { note "abuse libnbd" "serve died: $(tail -c 200 "$work/abl-serve.log")"; break; }
    done
    record "server abuse with libnbd's strict mode off (tests/tools/abuse-libnbd.py): reads, writes, trims and caches past the end or at 2^63, zero-length and unaligned reads, a 64 MiB read, writes to the read-only export, unknown flags, block status of 2^32-1, 32 reads in flight cut, 200 connections at once: the spec's errno, others served right" \
        "$tried" "$held" "scripts/reliability.sh abuse"
}

# ---- A running VM's backup killed ------------------------------------------------------

# The VM of the row, two qcow2 disks, no guest OS needed: a bare TCG QEMU
# stopped (-S), disks as nodes disk0 and disk1 on virtio-blk devices vblk0
# and vblk1, monitor vm.sock for nbdvault and vm2.sock for the row (kind
# qmp); or a transient libvirt domain (kind libvirt, the devices
# virtio-disk0 and 1).  The guest's writes go through each device (HMP
# qemu-io) and into a raw reference copy.
QMP_PY=$TOOLS/../integration/qmp.py
vm_images() {
    local i
    for i in 0 1; do
        qemu-img create -q -f qcow2 "$work/vm$i.qcow2" $((16 * M))
        qemu-io -f qcow2 -c "write -P 0x5$i 0 $((3 * M))" "$work/vm$i.qcow2" > /dev/null
        qemu-img convert -O raw "$work/vm$i.qcow2" "$work/vmref$i.raw"
        chmod 0666 "$work/vm$i.qcow2"
    done
}

vm_start() {
    vm_images
    if [ "$vk_kind" = libvirt ]; then
        vk_dom=nbdvault-rel-$$
        vk_disk=("$vk_dom/vda" "$vk_dom/vdb")
        vk_src=(--libvirt "$vk_dom")
        chmod 0711 "$work"
        cat > "$work/vm.xml" <<XML
<domain type='qemu'><name>$vk_dom</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$work/vm0.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$work/vm1.qcow2'/><target dev='vdb' bus='virtio'/></disk>
  </devices></domain>
XML
        # QEMU runs as libvirt's user: every directory above the images
        # must let it through (TMPDIR's too).
        virsh -q create "$work/vm.xml" > "$work/virsh.out" 2>&1 ||
            { echo "virsh create: $(tail -c 300 "$work/virsh.out")" >&2; return 1; }
        vk_stops+=("virsh -q destroy $vk_dom")
        return 0
    fi
    vk_disk=(relvm/disk0 relvm/disk1)
    vk_src=(--qmp "$work/vm.sock")
    rm -f "$work/vm.sock" "$work/vm2.sock"
    qemu-system-x86_64 -S -machine pc -accel tcg -nodefaults -display none -name relvm \
        -uuid 4d6f0c2e-7a11-4c1b-9e55-0b3a5f7c2e01 \
        -qmp "unix:$work/vm.sock,server=on,wait=off" -qmp "unix:$work/vm2.sock,server=on,wait=off" \
        -blockdev "driver=file,node-name=f0,filename=$work/vm0.qcow2" -blockdev "driver=qcow2,node-name=disk0,file=f0" \
        -device "virtio-blk-pci,drive=disk0,id=vblk0" \
        -blockdev "driver=file,node-name=f1,filename=$work/vm1.qcow2" -blockdev "driver=qcow2,node-name=disk1,file=f1" \
        -device "virtio-blk-pci,drive=disk1,id=vblk1" \
        -daemonize -pidfile "$work/vm.pid" || return 1
    pids+=("$(cat "$work/vm.pid")")
    vk_stops+=("/usr/bin/python3 '$QMP_PY' '$work/vm2.sock' quit")
}

# vm_hmp N CMD: a guest write CMD (qemu-io) to disk N.
vm_hmp() {
    local out
    if [ "$vk_kind" = libvirt ]; then
        out=$(virsh -q qemu-monitor-command "$vk_dom" --hmp \
            "qemu-io -d /machine/peripheral/virtio-disk$1/virtio-backend \"$2\"" 2>&1) || return 1
        case $out in *rror*|*ailed*) return 1 ;; esac
    else
        /usr/bin/python3 "$QMP_PY" "$work/vm2.sock" hmp \
            "qemu-io -d /machine/peripheral/vblk$1/virtio-backend \"$2\"" > /dev/null
    fi
}

# vm_writes: a few random 64 KiB guest writes to each disk, mirrored.
vm_writes() {
    local i j cmd
    for i in 0 1; do
        for j in 1 2 3; do
            cmd="write -P $((RANDOM % 250 + 1)) $(( (RANDOM % 256) * 65536 )) 64k"
            vm_hmp $i "$cmd" || return 1
            qemu-io -f raw -c "$cmd" "$work/vmref$i.raw" > /dev/null || return 1
        done
    done
}

# vm_clean: nothing of nbdvault's left in the hypervisor (jobs, exports,
# fleecing nodes, job directories) and one checkpoint per disk.  Prints
# what is left.
vm_clean() {
    ! compgen -G "$work/vmjobs/nbdvault-job-*" > /dev/null || { echo "a job directory is left"; return 1; }
    if [ "$vk_kind" = libvirt ]; then
        local cks i info
        cks=$(virsh -q checkpoint-list "$vk_dom" --name)
        [ "$(echo "$cks" | grep -c '^nbdvault-')" = 1 ] || { echo "checkpoints left: $cks"; return 1; }
        for i in $(seq 50); do
            info=$(virsh domjobinfo "$vk_dom")
            echo "$info" | grep -q "Job type: *None" && return 0
            sleep 0.1
        done
        echo "a job is left: $info"
        return 1
    fi
    /usr/bin/python3 - "$work/vm2.sock" "$QMP_PY" <<'PY' 2>&1 | tail -1
import json, subprocess, sys
def q(cmd):
    return json.loads(subprocess.check_output(["/usr/bin/python3", sys.argv[2], sys.argv[1], cmd]))
nodes = q("query-named-block-nodes")
assert not [n["node-name"] for n in nodes if "nbdvault" in n["node-name"]], "a fleecing node is left"
for n in nodes:
    if n["node-name"] in ("disk0", "disk1"):
        bms = [b["name"] for b in n.get("dirty-bitmaps", [])]
        assert len(bms) == 1 and bms[0].startswith("nbdvault-"), "bitmaps of %s: %s" % (n["node-name"], bms)
assert q("query-jobs") == [], "a job is left"
assert q("query-block-exports") == [], "an export is left"
PY
    return "${PIPESTATUS[0]}"
}

vm_backup() {
    "$NBDVAULT" backup "${vk_src[@]}" --repo "$work/repo-vm" --work-dir "$work/vmjobs" "$@"
}

vm_newest() {
    "$NBDVAULT" list --repo "$work/repo-vm" --disk "${vk_disk[$1]}" --json |
        python3 -c 'import json,sys; l=json.load(sys.stdin); print(l[-1]["point"] if l else 0)'
}

# vm_point_ok DISK POINT REF: the point restores as REF.
vm_point_ok() {
    "$NBDVAULT" restore --repo "$work/repo-vm" --disk "${vk_disk[$1]}" --point "$2" --output "$work/vm-r.raw" \
        > /dev/null 2>&1 && cmp -s "$work/vm-r.raw" "$3"
    local rc=$?
    rm -f "$work/vm-r.raw"
    return $rc
}

# One trial: guest writes, a backup killed after a random delay within a
# normal backup's duration (hypervisor setup, reads, commit, checkpoint
# rotation), more guest writes, then a backup to its end.  Holds when the
# killed run left no point or a whole one, the next backup is incremental
# for both disks (no checkpoint lost) and holds every write, and nothing is
# left over.
vm_trial() {
    local i=$1 ms=$2 d p why before=()
    vm_writes || { echo "guest writes failed"; return 1; }
    for d in 0 1; do
        cp --sparse=always "$work/vmref$d.raw" "$work/vmkill$d.raw"
        before[$d]=$(vm_newest $d)
    done
    "$NBDVAULT" backup "${vk_src[@]}" --repo "$work/repo-vm" --work-dir "$work/vmjobs" > /dev/null 2>&1 &
    local bk=$!
    sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
    kill -9 $bk 2>/dev/null
    wait $bk 2>/dev/null
    # A point the killed run committed holds the disk as it was when it began.
    for d in 0 1; do
        p=$(vm_newest $d)
        [ "$p" = "${before[$d]}" ] && continue
        echo "$i disk$d" >> "$work/vm-done"
        vm_point_ok $d "$p" "$work/vmkill$d.raw" || { echo "the killed run's point $p of ${vk_disk[$d]} does not restore"; return 1; }
    done
    vm_writes || { echo "guest writes failed"; return 1; }
    vm_backup --json > "$work/vm-b.json" 2> "$work/vm-b.err" ||
        { echo "the next backup failed: $(head -c 1200 "$work/vm-b.err")"; return 1; }
    why=$(python3 - "$work/vm-b.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    if r["kind"] != "incremental":
        print("%s: %s (%s) after the kill" % (r["disk"], r["kind"], r.get("full_reason")))
PY
)
    [ -z "$why" ] || { echo "$why"; return 1; }
    for d in 0 1; do
        vm_point_ok $d "$(vm_newest $d)" "$work/vmref$d.raw" || { echo "the next point of ${vk_disk[$d]} misses writes"; return 1; }
    done
    vm_clean
}

# row_vm_kill KIND: qmp (a bare QEMU) or libvirt (libvirtd, through
# scripts/libvirtd-test.sh: the suite's, or one of the row's own).
row_vm_kill() {
    vk_kind=$1
    local tried=0 held=0 i d why t0 t1 span what
    vk_stops=()
    rm -rf "$work/vmjobs" "$work/repo-vm" "$work/vm-done"
    mkdir -m 0711 -p "$work/vmjobs"
    case $vk_kind in
        qmp) what="QMP, a bare QEMU" ;;
        libvirt) what="libvirt"
            "$TOOLS/../../scripts/libvirtd-test.sh" start --holder $$ > "$work/libvirtd.log" 2>&1 ||
                { note "vm kill libvirt" "libvirtd did not start: $(tail -c 300 "$work/libvirtd.log")"
                  record "a running VM's backup killed (libvirt)" 1 0 "scripts/reliability.sh vm-kill"; return; }
            vk_stops+=("'$TOOLS/../../scripts/libvirtd-test.sh' stop --holder $$") ;;
    esac
    if ! vm_start 2> "$work/vm-start.err"; then
        note "vm kill $vk_kind" "the VM did not start: $(tail -c 300 "$work/vm-start.err")"
    elif ! "$NBDVAULT" init --repo "$work/repo-vm" > /dev/null || ! vm_backup > /dev/null 2>> "$work/vm.log"; then
        note "vm kill $vk_kind" "the first backup failed: $(tail -c 300 "$work/vm.log")"
    else
        # The span of the kills: a whole incremental of this VM, plus a fifth.
        vm_writes
        t0=$(date +%s%N)
        vm_backup > /dev/null 2>> "$work/vm.log" || note "vm kill $vk_kind" "an incremental failed"
        t1=$(date +%s%N)
        span=$(( (t1 - t0) / 1000000 * 6 / 5 + 1 ))
        for i in $(seq "$(n 50 3)"); do
            tried=$((tried + 1))
            if why=$(vm_trial "$i" $(( (RANDOM * 32768 + RANDOM) % span ))); then
                held=$((held + 1))
            else
                note "vm kill $vk_kind #$i" "$why"
            fi
        done
    fi
    for i in $(seq $((${#vk_stops[@]} - 1)) -1 0); do bash -c "${vk_stops[$i]}" > /dev/null 2>&1; done
    [ "$tried" -gt 0 ] || tried=1
    local done=0
    [ -e "$work/vm-done" ] && done=$(cut -d' ' -f1 "$work/vm-done" | sort -u | wc -l)
    record "kill -9 of nbdvault at a random moment of a running VM's backup ($what, two disks, guest writes between; kills spread over ${span:-0} ms, one backup's span): the next backup is incremental (no checkpoint lost) and holds every write, a point of the killed run is whole, nothing of ours left in the hypervisor ($done committed before the kill)" \
        "$tried" "$held" "scripts/reliability.sh vm-kill"
}

# ---- Faults between nbdvault and a bucket ------------------------------------------------

# The suite's Ceph RGW (make check) or one of the row's own.
s3_up() {
    if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
        export RGW_DIR=$work/rgw RGW_PORT=${RGW_PORT:-7490}
        "$TOOLS/../../scripts/rgw-test.sh" start > "$work/rgw.log" 2>&1 || return 1
        s3_stop=1
        eval "$("$TOOLS/../../scripts/rgw-test.sh" env)"
    fi
    export XDG_CACHE_HOME=$work/s3cache
    curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" -u "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
        -X PUT "$AWS_ENDPOINT_URL/$1" > /dev/null
}

# s3_proxy ARGS...: a fresh fault proxy in front of the bucket's server.
s3_proxy() {
    [ -z "${s3_pp:-}" ] || { kill "$s3_pp" 2>/dev/null; wait "$s3_pp" 2>/dev/null; }
    s3_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    python3 "$TOOLS/../integration/s3proxy.py" "$s3_port" "${AWS_ENDPOINT_URL##*:}" --log "$work/proxy.log" "$@" \
        > "$work/proxy.out" 2>&1 &
    s3_pp=$!
    local i
    for i in $(seq 50); do grep -q listening "$work/proxy.out" && return 0; sleep 0.1; done
    return 1
}

# s3_trial KIND I: one backup (or, for faults of GETs, one restore) through
# the proxy.  Holds when it succeeded with every byte or failed cleanly
# (exit 1 naming the fault, no new point), and the next command straight to
# the bucket succeeds.
s3_trial() {
    local kind=$1 i=$2 repo=s3://$s3_bucket/r rc=0 why= before
    local env=(endpoint)  # the proxy's, once it runs
    before=$(points "$repo")
    case $kind in
        503-10) s3_proxy --error-rate 10 --status 503 --retry-after 1 --seed "$i" ;;
        503-50) s3_proxy --error-rate 50 --status 503 --seed "$i"; env+=(NBDVAULT_S3_RETRIES=2) ;;
        429-50) s3_proxy --error-rate 50 --status 429 --code SlowDown --seed "$i"; env+=(NBDVAULT_S3_RETRIES=2) ;;
        reset) s3_proxy --reset-put ;;
        stall) s3_proxy --stall-get 30; env+=(NBDVAULT_S3_LOW_SPEED_TIME=2) ;;
        flip) s3_proxy --flip-get ;;
    esac
    env=(AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port "${env[@]:1}")
    case $kind in
        stall|flip)
            rm -f "$work/s3-r.raw"
            env "${env[@]}" timeout 120 "$NBDVAULT" restore --repo "$repo" --disk s --output "$work/s3-r.raw" \
                > /dev/null 2> "$work/s3.err" || rc=$?
            if [ $rc = 0 ]; then
                cmp -s "$work/s3-r.raw" "$work/s3.raw" || why="the restore wrote other bytes"
            elif [ $rc != 1 ] || ! [ -s "$work/s3.err" ]; then
                why="restore exit $rc: $(head -c 200 "$work/s3.err")"
            fi ;;
        *)
            head -c $((2 * M)) /dev/urandom | dd of="$work/s3.raw" bs=1M seek=$((RANDOM % 6)) conv=notrunc status=none
            env "${env[@]}" timeout 300 "$NBDVAULT" backup "nbd+unix:///?socket=$work/s3.sock" --repo "$repo" \
                --disk s --full > /dev/null 2> "$work/s3.err" || rc=$?
            if [ $rc = 0 ]; then
                [ "$(points "$repo")" = $((before + 1)) ] || why="a backup that succeeded recorded no point"
                [ -n "$why" ] || { "$NBDVAULT" restore --repo "$repo" --disk s --output "$work/s3-r.raw" > /dev/null 2>&1 &&
                    cmp -s "$work/s3-r.raw" "$work/s3.raw"; } || why="the point does not restore its bytes"
            elif [ $rc != 1 ] || ! grep -Eq "503|429|SlowDown|ServiceUnavailable" "$work/s3.err"; then
                why="backup exit $rc: $(head -c 200 "$work/s3.err")"
            elif [ "$(points "$repo")" != "$before" ]; then
                why="a failed backup recorded a point"
            elif ! "$NBDVAULT" backup "nbd+unix:///?socket=$work/s3.sock" --repo "$repo" --disk s --full > /dev/null 2>&1; then
                why="the rerun straight to the bucket failed"
            fi ;;
    esac
    s3_last_rc=$rc
    rm -f "$work/s3-r.raw"
    [ -z "$why" ] && return 0
    note "s3 $kind #$i" "$why"
    return 1
}

row_s3() {
    s3_bucket=rel-$(date +%s)-$$
    s3_stop=
    s3_up "$s3_bucket" || { note "s3" "no S3 server (scripts/rgw-test.sh start: $(tail -c 200 "$work/rgw.log"))"; failed=1; return; }
    head -c $((8 * M)) /dev/urandom > "$work/s3.raw"
    rm -f "$work/s3.sock"
    qemu-nbd --fork --pid-file="$work/s3q.pid" -k "$work/s3.sock" -t --shared=8 -f raw "$work/s3.raw"
    pids+=("$(cat "$work/s3q.pid")")
    "$NBDVAULT" init --repo "s3://$s3_bucket/r" > /dev/null
    "$NBDVAULT" backup "nbd+unix:///?socket=$work/s3.sock" --repo "s3://$s3_bucket/r" --disk s > /dev/null
    local kind i tried held ok what
    for kind in 503-10 503-50 429-50 reset stall flip; do
        tried=0 held=0 ok=0
        for i in $(seq "$(n 10 1)"); do
            tried=$((tried + 1))
            s3_trial "$kind" "$i" && held=$((held + 1)) && [ "$s3_last_rc" = 0 ] && ok=$((ok + 1))
        done
        case $kind in
            503-10) what="503 with Retry-After on 10% of S3 requests during a backup" ;;
            503-50) what="503 on 50% of S3 requests during a backup, 2 retries" ;;
            429-50) what="429 SlowDown on 50% of S3 requests during a backup, 2 retries" ;;
            reset) what="a PUT reset mid-body during a backup" ;;
            stall) what="a GET stalled past the low-speed limit during a restore" ;;
            flip) what="one flipped byte in a GET body during a restore" ;;
        esac
        record "$what: every byte right, or a clean error naming it and no point ($ok succeeded)" \
            "$tried" "$held" "scripts/reliability.sh s3"
    done
    kill "$s3_pp" 2>/dev/null
    [ -z "$s3_stop" ] || "$TOOLS/../../scripts/rgw-test.sh" stop > /dev/null 2>&1
}

for r in "${ROWS[@]}"; do
    case $r in
        errors) row_errors ;;
        damage) row_damage ;;
        server-kill) row_server_kill ;;
        kill) row_kill ;;
        pairs) row_pairs ;;
        same-disk) row_same_disk ;;
        hostile) row_hostile ;;
        tls) row_tls ;;
        full) row_full ;;
        valgrind) row_valgrind ;;
        abuse) row_abuse ;;
        vm-kill) row_vm_kill qmp; row_vm_kill libvirt ;;
        s3) row_s3 ;;
        *) echo "reliability: unknown row $r (errors, damage, server-kill, kill, pairs, same-disk, hostile, tls, full, valgrind, abuse, vm-kill, s3)" >&2; exit 2 ;;
    esac
done
[ -s "$work/trials.log" ] && { echo "trials that did not hold:" >&2; cat "$work/trials.log" >&2; }
if [ -n "$OUT" ]; then
    cpu=$(awk -F: '/model name/ { sub(/^ */, "", $2); print $2; exit }' /proc/cpuinfo)
    {
        echo "# Reliability"
        echo
        echo "Written by \`scripts/reliability.sh${SHORT:+ --short}\` (\`make reliability\`) on $(date -u +%Y-%m-%d),"
        echo "$(nproc) CPUs ($cpu).  Each row tried one kind of fault the number of times"
        echo "given; a trial held when the command either succeeded with every byte right or"
        echo "failed cleanly (exit 1, a message, no point recorded).  \`make check\` runs a"
        echo "few trials of each row (tests/integration/test-reliability.sh and -vm.sh).  This run took"
        echo "$((SECONDS / 60)) minutes."
        echo
        echo "| what was tried | tried | held | rerun |"
        echo "|---|---|---|---|"
        printf '%s\n' "${table[@]}"
        echo
        echo "Fuzzing (each libFuzzer harness for 30 minutes, \`make fuzz FUZZ_SECONDS=1800\`)"
        echo "is recorded by hand in docs/RELIABILITY-FUZZ.md.  The two rows of a running"
        echo "VM's backup killed drive a bare QEMU through QMP and a libvirt domain through"
        echo "libvirtd (scripts/libvirtd-test.sh starts one when none answers)."
    } > "$OUT"
fi
exit $failed
