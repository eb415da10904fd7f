# bench-disk.sh: the reference disk of the benchmarks, sourced by
# scripts/bench.sh, bench-s3.sh, bench-encrypt.sh, bench-scale.sh and bench-vm.sh (which set log, work, PY, GiB,
# MiB).  make_disk FILE SIZE builds FILE (with a bitmap b0 recording ~1% of
# scattered writes) and FILE.before (the disk before those writes).

# serve IMAGE SOCK [ARGS]: qemu-nbd read-only on SOCK, its pid added to the
# caller's pids array (killed by its cleanup).
serve() {   # serve IMAGE SOCK [ARGS]
    local img=$1 sock=$2
    shift 2
    qemu-nbd --fork --pid-file="$sock.pid" -k "$sock" -t -r -f qcow2 --shared=8 "$@" "$img"
    pids+=("$(cat "$sock.pid")")
}

make_disk() {   # make_disk FILE SIZE
    local img=$1 size=$2 tmp=$1.tmp
    log "bench: building $img ($((size / GiB)) GiB)"
    rm -f "$tmp"
    qemu-img create -q -f qcow2 "$tmp" "$size"
    (cd / && tar cf - --exclude=usr/lib/debug usr 2>/dev/null || true) | head -c $((1536 * MiB)) > "$work/files.tar"
    qemu-io -f qcow2 -c "write -s $work/files.tar 0 $(stat -c %s "$work/files.tar")" "$tmp" >/dev/null
    head -c $((512 * MiB)) /dev/urandom > "$work/random.bin"
    qemu-io -f qcow2 -c "write -s $work/random.bin $((2 * GiB)) $((512 * MiB))" "$tmp" >/dev/null
    rm -f "$work/files.tar" "$work/random.bin"
    # The disk as the full backup saw it...
    cp "$tmp" "$img.before"
    # ...then ~1% of the disk, scattered 64 KiB granules of new random data
    # over old files and holes alike, recorded by the bitmap b0: written
    # through a writable qemu-nbd export while the bitmap is enabled.
    qemu-img bitmap --add "$tmp" b0
    qemu-nbd --fork --pid-file="$work/w.pid" -k "$work/w.sock" -t -f qcow2 "$tmp"
    $PY - "nbd+unix:///?socket=$work/w.sock" "$size" <<'PY'
import nbd, os, random, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = int(sys.argv[2])
random.seed(11)
for c in sorted(random.sample(range(size // 65536), size // 100 // 65536)):
    h.pwrite(os.urandom(65536), c * 65536)
h.flush()
h.shutdown()
PY
    kill "$(cat "$work/w.pid")"
    while kill -0 "$(cat "$work/w.pid")" 2>/dev/null; do sleep 0.1; done
    mv "$tmp" "$img"
}


# put_section FILE.md SECTION.md: SECTION.md (starting "## TITLE") replaces
# the section of that title in FILE.md (keeping its paragraphs that start
# "Notes "), or goes in before its "## History".
put_section() {
    [ -n "$1" ] && [ -f "$1" ] || return 0
    /usr/bin/python3 - "$1" "$2" <<'PY'
import sys
doc, new = open(sys.argv[1]).read(), open(sys.argv[2]).read().rstrip() + "\n\n"
head = new.split("\n", 1)[0]
if head + "\n" in doc:
    a = doc.index(head + "\n")
    b = doc.find("\n## ", a + 1)
    old = doc[a:b if b >= 0 else len(doc)]
    # The notes written by hand under the old table stay (read them again).
    notes = [p for p in old.split("\n\n") if p.startswith("Notes ")]
    new += "".join(p.rstrip() + "\n\n" for p in notes)
    doc = doc[:a] + new + (doc[b + 1:] if b >= 0 else "")
else:
    i = doc.find("## History")
    doc = doc[:i] + new + doc[i:] if i >= 0 else doc + "\n" + new
open(sys.argv[1], "w").write(doc)
PY
}
