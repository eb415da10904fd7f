#!/usr/bin/python3
"""serve-check.py: checks the maps that `nbdvault serve` reports against
the disk's reference images, 64 KiB cell by cell (the repository's chunk).

  serve-check.py alloc MAP REF [QEMU_MAP]
      MAP (nbdinfo --map of base:allocation) covers the whole of REF with
      consecutive extents; every byte it calls zero reads as zero in REF;
      every cell holding a non-zero byte is data; and every cell that
      QEMU_MAP (qemu-nbd's map of the disk at that time) calls zero, ours
      calls zero too.
  serve-check.py depth MAP QEMU_MAP SIZE
      qemu:allocation-depth: the same depth as qemu-nbd -A on the overlay
      chain, cell by cell; extents end on cell boundaries.
  serve-check.py dirty MAP REF_NEW REF_OLD
      qemu:dirty-bitmap:since-P: dirty exactly in the cells where the two
      references differ; extents end on cell boundaries.
  serve-check.py diffbytes REF_A REF_B
      prints the bytes of the cells where the two images differ.
Exits 1 with the first differences on stderr.
"""
import os
import sys

CELL = 65536


def parse_map(path):
    """nbdinfo --map lines: offset length type description."""
    out = []
    with open(path) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            out.append((int(w[0]), int(w[1]), int(w[2])))
    return out


def check_cover(ext, size, what):
    pos = 0
    for off, length, _ in ext:
        if off != pos:
            die("%s: extent at %d, expected %d" % (what, off, pos))
        if length <= 0:
            die("%s: empty extent at %d" % (what, off))
        pos += length
    if pos != size:
        die("%s: extents end at %d, the export at %d" % (what, pos, size))


def check_cell_bounds(ext, size, what):
    for off, length, _ in ext:
        end = off + length
        if end % CELL and end != size:
            die("%s: extent %d+%d does not end on a %d-byte cell" % (what, off, length, CELL))


def per_cell(ext, size):
    """The type at the start of each cell."""
    n = (size + CELL - 1) // CELL
    cells = [None] * n
    for off, length, t in ext:
        c = (off + CELL - 1) // CELL
        while c < n and c * CELL < off + length:
            cells[c] = t
            c += 1
    return cells


def whole_cell_types(ext, size):
    """Per cell: the set of types the extents give its bytes."""
    n = (size + CELL - 1) // CELL
    cells = [set() for _ in range(n)]
    for off, length, t in ext:
        for c in range(off // CELL, min(n, (off + length - 1) // CELL + 1)):
            cells[c].add(t)
    return cells


def die(msg):
    print("serve-check: " + msg, file=sys.stderr)
    sys.exit(1)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def alloc(mpath, rpath, qpath=None):
    ref = read(rpath)
    size = len(ref)
    ext = parse_map(mpath)
    check_cover(ext, size, mpath)
    zero_cell = bytes(CELL)
    for off, length, t in ext:
        if t not in (0, 3):
            die("%s: base:allocation type %d at %d (expected 0 data or 3 hole,zero)" % (mpath, t, off))
        if t & 2 and ref[off:off + length].count(0) != length:
            first = next(i for i in range(off, off + length) if ref[i])
            die("%s: extent %d+%d is reported zero but byte %d of %s is 0x%02x"
                % (mpath, off, length, first, rpath, ref[first]))
    ours = whole_cell_types(ext, size)
    for c, types in enumerate(ours):
        chunk = ref[c * CELL:(c + 1) * CELL]
        if chunk != zero_cell[:len(chunk)] and types != {0}:
            die("%s: cell %d (offset %d) holds data but is reported %s" % (mpath, c, c * CELL, types))
    if qpath:
        q = whole_cell_types(parse_map(qpath), size)
        worse = [c for c in range(len(q)) if all(t & 2 for t in q[c]) and ours[c] != {3}]
        if worse:
            die("%s: cells qemu-nbd reports zero are data here: %s"
                % (mpath, ", ".join("%d (offset %d)" % (c, c * CELL) for c in worse[:8])))


def depth(mpath, qpath, size):
    size = int(size)
    ext = parse_map(mpath)
    check_cover(ext, size, mpath)
    check_cell_bounds(ext, size, mpath)
    ours, theirs = per_cell(ext, size), per_cell(parse_map(qpath), size)
    bad = [c for c in range(len(ours)) if ours[c] != theirs[c]]
    if bad:
        die("%s: allocation depth differs from qemu-nbd -A in cells %s"
            % (mpath, ", ".join("%d (offset %d): %s, qemu %s" % (c, c * CELL, ours[c], theirs[c])
                                for c in bad[:8])))


def changed_cells(a, b):
    if len(a) != len(b):
        die("the references differ in size")
    n = (len(a) + CELL - 1) // CELL
    return [a[c * CELL:(c + 1) * CELL] != b[c * CELL:(c + 1) * CELL] for c in range(n)]


def dirty(mpath, newpath, oldpath):
    new, old = read(newpath), read(oldpath)
    size = len(new)
    ext = parse_map(mpath)
    check_cover(ext, size, mpath)
    check_cell_bounds(ext, size, mpath)
    for off, _, t in ext:
        if t not in (0, 1):
            die("%s: dirty bitmap type %d at %d" % (mpath, t, off))
    ours = per_cell(ext, size)
    want = changed_cells(new, old)
    bad = [c for c in range(len(want)) if (ours[c] == 1) != want[c]]
    if bad:
        die("%s: dirty where nothing changed, or clean where %s and %s differ, in cells %s"
            % (mpath, newpath, oldpath,
               ", ".join("%d (offset %d): %s" % (c, c * CELL, "dirty" if ours[c] else "clean")
                         for c in bad[:8])))


def diffbytes(a, b):
    A, B = read(a), read(b)
    ch = changed_cells(A, B)
    total = 0
    for c, d in enumerate(ch):
        if d:
            total += min(CELL, len(A) - c * CELL)
    print(total)


def main():
    cmds = {"alloc": (alloc, (2, 3)), "depth": (depth, (3,)), "dirty": (dirty, (3,)),
            "diffbytes": (diffbytes, (2,))}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) - 2 not in cmds[sys.argv[1]][1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]][0](*sys.argv[2:])


if __name__ == "__main__":
    main()
