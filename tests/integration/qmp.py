#!/usr/bin/python3
"""qmp.py SOCKET COMMAND [JSON-ARGUMENTS]: one QMP command on a monitor
socket (greeting, qmp_capabilities, the command); prints its "return" as
JSON, or its error on stderr with exit 1.

  qmp.py S hmp 'qemu-io -d /machine/peripheral/vblk0/virtio-backend "write -P 0x63 1M 64k"'
      an HMP command line (human-monitor-command); its output on stdout;
      exit 1 when the output looks like an error.
"""
import json
import socket
import sys


def main():
    path, cmd = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(path)
    f = s.makefile("rw")

    def reply():
        while True:
            line = f.readline()
            if not line:
                sys.exit("qmp.py: QEMU closed the connection")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    reply()  # the greeting
    f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n")
    f.flush()
    reply()
    if cmd == "hmp":
        args = {"command-line": sys.argv[3]}
        cmd = "human-monitor-command"
    else:
        args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
    f.flush()
    r = reply()
    if "error" in r:
        print("qmp.py: %s: %s" % (cmd, r["error"].get("desc")), file=sys.stderr)
        sys.exit(1)
    ret = r.get("return")
    if isinstance(ret, str):
        sys.stdout.write(ret)
        low = ret.lower()
        if "error" in low or "failed" in low or "could not" in low:
            sys.exit(1)
    else:
        print(json.dumps(ret))


main()
