#!/bin/bash
# nbdvault info agrees with nbdinfo: --json on every key both print (only
# nbdinfo's "content" is nbdinfo's own; nbdvault adds "extended_headers"
# and "can_block_status_payload"), the text output line for line, and
# --list over a server with two exports.
. "$(dirname "$0")/lib.sh"
requires qemu-img --version
requires qemu-nbd --version
requires nbdkit file --version
requires nbdinfo --version

# compare_json NBDINFO.json NBDVAULT.json: equal on the keys both have; the
# keys only one side has are exactly the expected ones.
compare_json ()
{
    "$PYTHON" - "$1" "$2" <<'EOF' || fail "nbdvault info --json disagrees with nbdinfo --json"
import json, sys
with open(sys.argv[1]) as f: ref = json.load(f)
with open(sys.argv[2]) as f: got = json.load(f)
ONLY_REF = {"content"}
ONLY_GOT = {"extended_headers", "can_block_status_payload"}
bad = []
def cmp(path, r, g):
    if isinstance(r, dict) and isinstance(g, dict):
        for k in sorted(set(r) | set(g)):
            if k in r and k in g:
                cmp(path + "." + k, r[k], g[k])
            elif k in r and k not in ONLY_REF:
                bad.append("%s.%s: missing in nbdvault (nbdinfo: %r)" % (path, k, r[k]))
            elif k in g and k not in ONLY_GOT:
                bad.append("%s.%s: only in nbdvault (%r)" % (path, k, g[k]))
    elif isinstance(r, list) and isinstance(g, list) and len(r) == len(g):
        for i, (x, y) in enumerate(zip(r, g)):
            cmp("%s[%d]" % (path, i), x, y)
    elif type(r) is not type(g) or r != g:
        bad.append("%s: nbdinfo %r, nbdvault %r" % (path, r, g))
cmp("", ref, got)
if got.get("extended_headers") is not False:
    bad.append(".extended_headers: %r, wanted false" % got.get("extended_headers"))
for e in got.get("exports", []):
    if e.get("can_block_status_payload") is not False:
        bad.append("can_block_status_payload: %r" % e.get("can_block_status_payload"))
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
EOF
}

# compare_text NBDINFO.txt NBDVAULT.txt: the same lines but nbdinfo's
# "content:" and nbdvault's "can_block_status_payload:".
compare_text ()
{
    grep -v $'^\tcontent: ' "$1" > "$1.cmp"
    grep -v $'^\tcan_block_status_payload: ' "$2" > "$2.cmp"
    diff -u "$1.cmp" "$2.cmp" || fail "nbdvault info text differs from nbdinfo"
}

# 1. qemu-nbd, read-only qcow2 with a bitmap and allocation depth, --shared=4.
qemu-img create -q -f qcow2 ro.qcow2 100M
qemu-img bitmap --add ro.qcow2 b0
start_qemu_nbd ro.sock -t -r -f qcow2 -B b0 -A --shared=4 ro.qcow2
uri="nbd+unix:///?socket=$testdir/ro.sock"
nbdinfo --json "$uri" > ro.nbdinfo.json
run $NBDVAULT info --json "$uri" > ro.nbdvault.json
cat ro.nbdvault.json
compare_json ro.nbdinfo.json ro.nbdvault.json
"$PYTHON" - ro.nbdvault.json <<'EOF' || fail "read-only --shared=4 export shown wrongly"
import json, sys
j = json.load(open(sys.argv[1]))
e = j["exports"][0]
assert j["TLS"] is False and j["structured"] is True, j
assert e["is_read_only"] is True and e["can_multi_conn"] is True, e
assert e["can_trim"] is False and e["can_zero"] is False, e
assert e["export-size"] == 100 << 20, e
assert sorted(e["contexts"]) == ["base:allocation", "qemu:allocation-depth",
                                 "qemu:dirty-bitmap:b0"], e
EOF
nbdinfo "$uri" > ro.nbdinfo.txt
run $NBDVAULT info "$uri" > ro.nbdvault.txt
compare_text ro.nbdinfo.txt ro.nbdvault.txt
grep -q '^protocol: newstyle-fixed without TLS, using structured packets$' ro.nbdvault.txt ||
    fail "no protocol line"
for ctx in base:allocation qemu:allocation-depth qemu:dirty-bitmap:b0; do
    grep -qx $'\t\t'"$ctx" ro.nbdvault.txt || fail "text output does not list context $ctx"
done

# 2. qemu-nbd, writable, a named export with a description, the default
#    --shared=1 (no multi-conn); the name needs percent-encoding.
qemu-img create -q -f raw rw.img 3M
start_qemu_nbd rw.sock -t -f raw -x 'my disk' -D 'a test disk' rw.img
uri="nbd+unix:///my%20disk?socket=$testdir/rw.sock"
nbdinfo --json "$uri" > rw.nbdinfo.json
run $NBDVAULT info --json "$uri" > rw.nbdvault.json
compare_json rw.nbdinfo.json rw.nbdvault.json
"$PYTHON" - rw.nbdvault.json <<'EOF' || fail "writable named export shown wrongly"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
assert e["export-name"] == "my disk" and e["description"] == "a test disk", e
assert e["is_read_only"] is False and e["can_multi_conn"] is False, e
assert e["can_trim"] is True and e["can_zero"] is True and e["can_fast_zero"] is True, e
assert e["export-size"] == 3 << 20 and e["export-size-str"] == "3M", e
EOF
nbdinfo "$uri" > rw.nbdinfo.txt
run $NBDVAULT info "$uri" > rw.nbdvault.txt
compare_text rw.nbdinfo.txt rw.nbdvault.txt
grep -q $'^\tdescription: a test disk$' rw.nbdvault.txt || fail "no description line"
# qemu-nbd serves one export, and lists it.
nbdinfo --list --json "nbd+unix:///?socket=$testdir/rw.sock" > rwlist.nbdinfo.json
run $NBDVAULT info --list --json "nbd+unix:///?socket=$testdir/rw.sock" > rwlist.nbdvault.json
compare_json rwlist.nbdinfo.json rwlist.nbdvault.json

# 3. --list: nbdkit's file plugin in dir= mode serves one export per file.
mkdir exports
truncate -s 1M exports/one
truncate -s 3M exports/two
start_nbdkit list.sock file dir="$testdir/exports"
uri="nbd+unix:///?socket=$testdir/list.sock"
nbdinfo --list --json "$uri" > list.nbdinfo.json
run $NBDVAULT info --list --json "$uri" > list.nbdvault.json
cat list.nbdvault.json
compare_json list.nbdinfo.json list.nbdvault.json
"$PYTHON" - list.nbdvault.json <<'EOF' || fail "--list does not show both exports"
import json, sys
ex = json.load(open(sys.argv[1]))["exports"]
got = sorted((e["export-name"], e["export-size"]) for e in ex)
assert got == [("one", 1 << 20), ("two", 3 << 20)], got
for e in ex:
    assert e["uri"].startswith("nbd+unix:///%s?socket=" % e["export-name"]), e
EOF
nbdinfo --list "$uri" > list.nbdinfo.txt
run $NBDVAULT info --list "$uri" > list.nbdvault.txt
compare_text list.nbdinfo.txt list.nbdvault.txt
grep -qx 'export="one":' list.nbdvault.txt && grep -qx 'export="two":' list.nbdvault.txt ||
    fail "text --list does not name both exports"
# Each listed export is reachable on its own, under the URI --list shows.
run $NBDVAULT info --json "nbd+unix:///two?socket=$testdir/list.sock" > two.json
"$PYTHON" -c 'import json, sys; e = json.load(open("two.json"))["exports"][0]
assert e["export-name"] == "two" and e["export-size"] == 3 << 20, e'

# 4. nbdkit memory: no block size advertised, multi-conn, a writable export.
start_nbdkit mem.sock memory 1G
uri="nbd+unix:///?socket=$testdir/mem.sock"
nbdinfo --json "$uri" > mem.nbdinfo.json
run $NBDVAULT info --json "$uri" > mem.nbdvault.json
compare_json mem.nbdinfo.json mem.nbdvault.json
nbdinfo "$uri" > mem.nbdinfo.txt
run $NBDVAULT info "$uri" > mem.nbdvault.txt
compare_text mem.nbdinfo.txt mem.nbdvault.txt

# 5. Sizes that are not a whole number of K, M...: nbdinfo shows the largest
#    unit that divides the size exactly, or the bytes alone ("1536K",
#    "5242881"), never a rounded "1.5M" or "5.0M".
for size in 0 1000 1536 1000000 1572864 5242881; do
    start_nbdkit "m$size.sock" memory "$size"
    uri="nbd+unix:///?socket=$testdir/m$size.sock"
    nbdinfo --json "$uri" > "m$size.nbdinfo.json"
    run $NBDVAULT info --json "$uri" > "m$size.nbdvault.json"
    compare_json "m$size.nbdinfo.json" "m$size.nbdvault.json"
    nbdinfo "$uri" > "m$size.nbdinfo.txt"
    run $NBDVAULT info "$uri" > "m$size.nbdvault.txt"
    compare_text "m$size.nbdinfo.txt" "m$size.nbdvault.txt"
done
grep -qx $'\texport-size: 1572864 (1536K)' m1572864.nbdvault.txt || fail "1536K"
grep -qx $'\texport-size: 5242881' m5242881.nbdvault.txt || fail "5242881"
