#!/usr/bin/env python3
"""Run commands in a lab VM through its QEMU guest agent.

The VM's virtio-serial port org.qemu.guest_agent.0 is a unix socket on the
host (`-chardev socket,path=...,server=on`). No network, no ssh keys: the
host asks the agent to `guest-exec` a command and collects its status and
output. The agent has no streaming, so output arrives when the command ends.

    qga.py SOCKET wait [--timeout S]            # until the agent answers
    qga.py SOCKET run [--timeout S] -- CMD...   # CMD's stdout/stderr and exit status
"""

import argparse
import base64
import json
import os
import random
import socket
import sys
import time

ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME=/root", "LC_ALL=C.UTF-8", "TERM=dumb"]


class AgentError(Exception):
    pass


class Guest:
    def __init__(self, path: str):
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.buf = b""

    def _send(self, msg: dict) -> None:
        assert self.sock is not None
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def _recv(self, deadline: float) -> dict:
        assert self.sock is not None
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the guest agent did not answer")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("the guest agent did not answer") from None
            if not chunk:
                raise ConnectionError("the guest agent's socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.strip().lstrip(b"\xff")
        if not line:
            return self._recv(deadline)
        try:
            return json.loads(line)
        except ValueError:
            return {}  # a partial line from before a resync

    def _connect(self, timeout: float) -> None:
        """Connect and resynchronise: answers to an earlier client's
        requests may still be queued, so wait for our own sync id."""
        if self.sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        self.sock, self.buf = sock, b""
        sync_id = random.randrange(1, 2**31)
        deadline = time.monotonic() + timeout
        self._send({"execute": "guest-sync", "arguments": {"id": sync_id}})
        while True:
            if self._recv(deadline).get("return") == sync_id:
                return

    def call(self, command: str, arguments: dict | None = None, timeout: float = 10.0):
        self._connect(timeout)
        msg = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self._send(msg)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._recv(deadline)
            if "error" in reply:
                raise AgentError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            if "return" in reply:
                return reply["return"]

    def wait(self, timeout: float) -> None:
        """Until the agent answers (the VM has booted that far)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("guest-ping", timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                return
            except (OSError, TimeoutError, ConnectionError):
                self.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no guest agent on {self.path} after {timeout:.0f} s") from None
                time.sleep(1)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """bash -c COMMAND as root in the guest: (status, stdout, stderr).
        Status 124 when it outlived the timeout (it is then killed)."""
        pid = self.call("guest-exec", {
            "path": "/bin/bash", "arg": ["-c", command], "env": ENV, "capture-output": True,
        })["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            st = self.call("guest-exec-status", {"pid": pid}, timeout=30)
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                if "signal" in st:
                    return 128 + st["signal"], out, err
                return st.get("exitcode", 1), out, err
            if time.monotonic() > deadline:
                self.run(f"kill -9 $(cat /proc/{pid}/task/*/children 2>/dev/null) {pid} 2>/dev/null; true",
                         timeout=30)
                return 124, "", f"timed out after {timeout:.0f} s\n"
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("socket")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--timeout", type=float, default=300)
    r = sub.add_parser("run")
    r.add_argument("--timeout", type=float, default=60)
    r.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    g = Guest(a.socket)
    try:
        if a.cmd == "wait":
            g.wait(a.timeout)
            return 0
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        rc, out, err = g.run(" ".join(cmd), a.timeout)
        sys.stdout.write(out)
        sys.stderr.write(err)
        return rc
    except (OSError, TimeoutError, AgentError) as e:
        print(f"qga: {e}", file=sys.stderr)
        return 125
    finally:
        g.close()


if __name__ == "__main__":
    sys.exit(main())
