# vm-lib.sh: running VMs for the tests of backups through QMP and libvirt,
# sourced after lib.sh and backup-lib.sh.
#
# The "guest" writes through the device's own BlockBackend with HMP's
# qemu-io (a plain qemu-io of the node would conflict with the backup's
# permissions), and the same write is applied to a raw reference copy of
# the disk (ref-DISK.raw), so that every point can be compared with what the
# disk held at its moment.

QMP_PY=$here/qmp.py

# start_qmp_vm NAME IMAGE... : a TCG QEMU, stopped (-S, no guest OS needed),
# with disk N = IMAGE N as node diskN on virtio-blk device vblkN, monitor
# mon.sock for nbdvault and mon2.sock for the test.  Sets $vm_pid.
start_qmp_vm ()
{
    local name=$1 i=0 args=()
    shift
    for img; do
        args+=(-blockdev "driver=file,node-name=f$i,filename=$img"
               -blockdev "driver=qcow2,node-name=disk$i,file=f$i"
               -device "virtio-blk-pci,drive=disk$i,id=vblk$i")
        i=$((i + 1))
    done
    rm -f "$testdir/mon.sock" "$testdir/mon2.sock" "$testdir/vm.pid"
    run qemu-system-x86_64 -S -machine pc -accel tcg -nodefaults -display none \
        -name "$name" -uuid 6c2b1c5e-0f4e-4a57-9d7e-5d0f8c3a${VM_UUID_TAIL:-1001} \
        -qmp "unix:$testdir/mon.sock,server=on,wait=off" \
        -qmp "unix:$testdir/mon2.sock,server=on,wait=off" \
        "${args[@]}" -daemonize -pidfile "$testdir/vm.pid" || fail "QEMU did not start"
    vm_pid=$(cat "$testdir/vm.pid")
    _add_pid "$vm_pid"
}

# stop_qmp_vm: a clean quit (persistent bitmaps are written to the qcow2).
stop_qmp_vm ()
{
    "$PYTHON" "$QMP_PY" "$testdir/mon2.sock" quit >/dev/null 2>&1
    local i
    for i in $(seq 100); do _alive "$vm_pid" || return 0; sleep 0.05; done
    fail "QEMU did not quit"
}

# qmp CMD [JSON]: a QMP command on the test's monitor.
qmp ()
{
    "$PYTHON" "$QMP_PY" "$testdir/mon2.sock" "$@"
}

# guest_write N QEMU-IO-WRITE...: e.g. guest_write 0 "write -P 0x63 1M 64k";
# applied to the VM's disk N and to ref-N.raw.
guest_write ()
{
    local n=$1 cmd=$2
    qmp hmp "qemu-io -d /machine/peripheral/vblk$n/virtio-backend \"$cmd\"" >/dev/null \
        || fail "guest write '$cmd' to disk $n failed"
    qemu-io -f raw -c "$cmd" "ref-$n.raw" >/dev/null || fail "qemu-io $cmd on ref-$n.raw"
}

# wait_job_dir DIR: until a backup job's directory under DIR holds a socket
# (the job has begun: its moment is fixed).  Fails after 30 s.
wait_job_dir ()
{
    local i
    for i in $(seq 300); do
        compgen -G "$1/nbdvault-job-*/*.sock" >/dev/null && return 0
        sleep 0.1
    done
    fail "no backup job started under $1"
}

# points_of REPO DISK: the ids of a disk's points, oldest first.
points_of ()
{
    "$NBDVAULT" list --repo "$1" --disk "$2" --json |
        "$PYTHON" -c 'import json,sys; print(" ".join(str(p["point"]) for p in json.load(sys.stdin)))'
}

# jarr FILE INDEX KEY: a value of the INDEX-th object of a JSON array.
jarr ()
{
    "$PYTHON" -c 'import json,sys; v=json.load(open(sys.argv[1]))[int(sys.argv[2])][sys.argv[3]]; print("null" if v is None else v)' "$1" "$2" "$3"
}

# ---- libvirt ------------------------------------------------------------------
# libvirtd is started once per suite by run.sh (`# requires: libvirtd`).
# QEMU runs as libvirt-qemu: the test directory must be traversable and the
# images readable by it.

# start_libvirt_vm NAME IMAGE... : a transient TCG domain, no OS, with disk N
# = IMAGE N on target vd{a,b,...} (virtio, device alias virtio-diskN).
start_libvirt_vm ()
{
    local name=$1 i=0 t disks=""
    shift
    chmod 0711 "$testdir"
    for img; do
        t=vd$(printf "\\x$(printf %x $((97 + i)))")
        chmod 0666 "$img"
        disks+="<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
          <source file='$testdir/$img'/><target dev='$t' bus='virtio'/></disk>"
        i=$((i + 1))
    done
    cat > "$testdir/$name.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>$disks</devices>
</domain>
XML
    run virsh -q create "$testdir/$name.xml" >/dev/null || fail "virsh create $name failed"
    cleanup_fn virsh -q destroy "$name"
}

# lv_write DOMAIN N QEMU-IO-WRITE [R]: a guest write to disk N, mirrored to
# ref-R.raw (R defaults to N).
lv_write ()
{
    local dom=$1 n=$2 cmd=$3 r=${4:-$2} out
    out=$(virsh -q qemu-monitor-command "$dom" --hmp \
        "qemu-io -d /machine/peripheral/virtio-disk$n/virtio-backend \"$cmd\"" 2>&1) \
        || fail "guest write '$cmd' to disk $n of $dom failed: $out"
    case $out in *rror*|*ailed*) fail "guest write '$cmd' to disk $n of $dom: $out" ;; esac
    qemu-io -f raw -c "$cmd" "ref-$r.raw" >/dev/null || fail "qemu-io $cmd on ref-$r.raw"
}
