#!/bin/bash
# rgw-test.sh start|stop|env: a throwaway single-node Ceph RADOS Gateway
# (S3 with SigV4 checks) for the tests and the benchmark, on 127.0.0.1.
#
#   start   monitor + OSD + radosgw, a user with the keys below
#   stop    stops what start started (by the pid files it wrote)
#   env     prints the shell lines that point nbdvault at it
#
# Environment: RGW_DIR (state, default /tmp/nbdvault-rgw), RGW_PORT (7480),
# RGW_MEMSTORE_BYTES (the OSD's store, default 4 GiB: when it is full,
# writes hang instead of failing), RGW_OBJECTSTORE (memstore, the default:
# in RAM, up in ~2 s, for the tests; or bluestore: a preallocated file of
# that size in RGW_DIR written with direct I/O, as a real OSD stores on a disk,
# for the benchmark: a memstore OSD takes every byte it keeps into fresh
# pages, which on this project's VMs cost it more CPU than anything else
# it does).  The monitor uses 127.0.0.1:3300/6789, the OSD ports from 6800.
set -eu

dir=${RGW_DIR:-/tmp/nbdvault-rgw}
port=${RGW_PORT:-7480}
access=TESTACCESSKEY0000001
secret=testsecretkey0000000000000000000000000001
conf=$dir/ceph.conf

say() { echo "rgw-test: $*" >&2; }

until_ok() {  # until_ok SECONDS WHAT CMD...
    local end=$((SECONDS + $1)) what=$2
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $end ]; then
            say "gave up waiting for $what (logs in $dir/log)"
            return 1
        fi
        sleep 0.2
    done
}

stop() {
    local d pid
    for d in radosgw osd mon; do
        [ -f "$dir/pids/$d" ] || continue
        pid=$(cat "$dir/pids/$d")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/pids/$d"
    done
}

store_conf() {
    local bytes=${RGW_MEMSTORE_BYTES:-4294967296}
    case ${RGW_OBJECTSTORE:-memstore} in
    memstore)
        printf '%s\n' "osd_objectstore = memstore" "memstore_device_bytes = $bytes" ;;
    bluestore)
        printf '%s\n' "osd_objectstore = bluestore" "bluestore_block_path = $dir/osd-block" \
            "bluestore_block_size = $bytes" "bluestore_block_create = true" \
            "bluestore_block_preallocate_file = true" \
            "bluestore_fsck_on_mkfs = false" "bluestore_cache_size = 268435456" \
            "osd_memory_target = 1073741824" ;;
    *) say "RGW_OBJECTSTORE must be memstore or bluestore"; return 1 ;;
    esac
}

write_conf() {
    cat >"$conf" <<EOF
[global]
fsid = $1
mon_host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# radosgw asks for "secure" mode by default, which needs auth
ms_mon_client_mode = crc
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_data_avail_warn = 1
mon_data_avail_crit = 0
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
# map changes committed at once (else a start takes ~15 s)
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
run_dir = $dir/run
admin_socket = $dir/run/\$name.asok
log_file = $dir/log/\$name.log
pid_file = $dir/run/\$name.pid
keyring = /dev/null
$(store_conf)
# Huge pages for the daemons' memory (with glibc.malloc.hugetlb=1 below):
# Ceph turns them off by default, and a memstore OSD then takes a page
# fault for every 4 KiB it stores; on a paravirtualised VM those faults
# cost the OSD more than the copies (a 1.2 GB upload: 11 -> 7 CPU-s).
thp = true
# Loopback between the gateway and the OSD: no CRC of every data segment.
ms_crc_data = false

[mon.a]
mon_data = $dir/mon

[osd.0]
osd_data = $dir/osd

[client.rgw.a]
# tcp_nodelay: without it beast sends a small answer's body after its
# headers only once the client has acknowledged them, and a client on a
# kept-alive connection delays that ACK by 40 ms: every small GET took 44 ms.
rgw_frontends = beast endpoint=127.0.0.1:$port tcp_nodelay=1
rgw_data = $dir/rgw
EOF
}

daemon() {  # daemon NAME CMD...: started in its own session, pid recorded
    local name=$1
    shift
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 setsid "$@" -f </dev/null >>"$dir/log/$name.out" 2>&1 &
    echo $! >"$dir/pids/$name"
}

start() {
    if ls "$dir"/pids/* >/dev/null 2>&1; then
        say "already started in $dir (stop it first)"
        return 1
    fi
    for p in 3300 6789 "$port"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            say "127.0.0.1:$p is in use"
            return 1
        fi
    done
    store_conf >/dev/null || return 1
    trap 'rc=$?; [ $rc -eq 0 ] || { say "start failed"; stop; }' EXIT
    rm -rf "$dir"
    mkdir -p "$dir/mon" "$dir/osd" "$dir/rgw" "$dir/run" "$dir/log" "$dir/pids"
    local fsid osd
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd=$(cat /proc/sys/kernel/random/uuid)
    write_conf "$fsid"
    export CEPH_CONF=$conf
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:3300,v1:127.0.0.1:6789]" \
        "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap"
    daemon mon ceph-mon -c "$conf" -i a
    until_ok 30 "the monitor" ceph -c "$conf" --connect-timeout 2 mon stat
    ceph -c "$conf" osd new "$osd" >/dev/null
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd" 2>>"$dir/log/osd-mkfs.out"
    daemon osd ceph-osd -c "$conf" -i 0
    until_ok 60 "the OSD" sh -c "ceph -c '$conf' osd stat -f json | grep -q '\"num_up_osds\":1'"
    daemon radosgw radosgw -c "$conf" -n client.rgw.a
    until_ok 120 "radosgw on port $port" curl -sf -o /dev/null "http://127.0.0.1:$port/"
    radosgw-admin -c "$conf" -n client.admin user create --uid=nbdvault-test \
        --display-name="nbdvault tests" --access-key="$access" --secret-key="$secret" >/dev/null
    trap - EXIT
    say "ready on http://127.0.0.1:$port"
}

case ${1:-} in
start) start ;;
stop) stop ;;
env)
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$port"
    echo "export AWS_ACCESS_KEY_ID=$access"
    echo "export AWS_SECRET_ACCESS_KEY=$secret"
    ;;
*) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
