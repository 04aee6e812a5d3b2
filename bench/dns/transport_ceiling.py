#!/usr/bin/env python3
"""How fast can Python move DNS datagrams at all? A do-nothing responder per transport.

  transport_ceiling.py serve MODE PORT     answer every query with itself (QR set), until SIGTERM
  transport_ceiling.py run [PORT]          each MODE in turn under loadgen: q/s and server CPU per query

MODE: mmsg (geodns.dns._mmsg, the C extension), ctypes (the same system calls
through ctypes), uvloop and asyncio (DatagramProtocol, one recvfrom/sendto per
query). The difference between these and geodns's own numbers is the cost of
answering; see bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

BATCH = 64
MSG_DONTWAIT = 0x40


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(IOVec)),
        ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


class CtypesMmsg:
    """recvmmsg/sendmmsg through ctypes: the alternative to the C extension, measured here."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.recvmmsg, self.sendmmsg = libc.recvmmsg, libc.sendmmsg
        self.bufs = [ctypes.create_string_buffer(4096) for _ in range(BATCH)]
        self.names = [ctypes.create_string_buffer(128) for _ in range(BATCH)]
        self.iovs = (IOVec * BATCH)()
        self.msgs = (MMsgHdr * BATCH)()
        self.siovs = (IOVec * BATCH)()
        self.smsgs = (MMsgHdr * BATCH)()
        for i in range(BATCH):
            self.iovs[i].base = ctypes.addressof(self.bufs[i])
            self.iovs[i].len = 4096
            self.msgs[i].hdr.iov = ctypes.pointer(self.iovs[i])
            self.msgs[i].hdr.iovlen = 1
            self.msgs[i].hdr.name = ctypes.addressof(self.names[i])

    def recv(self, fd: int, n: int = BATCH) -> list[tuple[bytes, bytes]]:
        msgs = self.msgs
        for i in range(n):
            msgs[i].hdr.namelen = 128
        got = self.recvmmsg(fd, msgs, n, MSG_DONTWAIT, None)
        if got <= 0:
            return []
        bufs, names = self.bufs, self.names
        return [(bufs[i].raw[: msgs[i].len], names[i].raw[: msgs[i].hdr.namelen]) for i in range(got)]

    def send(self, fd: int, items: list[tuple[bytes, bytes]]) -> int:
        keep = []
        for i, (data, addr) in enumerate(items):
            d, a = ctypes.c_char_p(data), ctypes.c_char_p(addr)
            keep.append((d, a))
            self.siovs[i].base = ctypes.cast(d, ctypes.c_void_p)
            self.siovs[i].len = len(data)
            h = self.smsgs[i].hdr
            h.iov = ctypes.pointer(self.siovs[i])
            h.iovlen = 1
            h.name = ctypes.cast(a, ctypes.c_void_p)
            h.namelen = len(addr)
        return self.sendmmsg(fd, self.smsgs, len(items), MSG_DONTWAIT)


def reply(data: bytes) -> bytes:
    return data[:2] + bytes([data[2] | 0x80]) + data[3:]


async def serve(mode: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", port))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if mode in ("mmsg", "ctypes"):
        if mode == "mmsg":
            from geodns.dns import _mmsg as io
        else:
            io = CtypesMmsg()
        sock.setblocking(False)
        fd = sock.fileno()

        def readable() -> None:
            for _ in range(16):
                batch = io.recv(fd, BATCH)
                if not batch:
                    return
                io.send(fd, [(reply(d), a) for d, a in batch])
                if len(batch) < BATCH:
                    return

        loop.add_reader(fd, readable)
    else:
        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr) -> None:
                self.transport.sendto(reply(data), addr)

        await loop.create_datagram_endpoint(Echo, sock=sock)
    await stop.wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(port: int) -> int:
    loadgen = benchlib.cache_dir("bin") / "loadgen"
    workload = benchlib.cache_dir("workloads") / "city" / "main.bin"
    if not workload.exists():
        workload = next(benchlib.cache_dir("workloads").rglob("main.bin"))
    print("| transport | q/s | server CPU µs per query |\n|---|---:|---:|")
    for mode in ("mmsg", "ctypes", "uvloop", "asyncio"):
        env = dict(os.environ, PYTHONPATH=str(Path(benchlib.HERE).parents[1]))
        p = subprocess.Popen(["taskset", "-c", "0", sys.executable, __file__, "serve", mode, str(port)], env=env)
        try:
            time.sleep(1.5)
            c0 = cpu_seconds(p.pid)
            r = subprocess.run(["taskset", "-c", "1", str(loadgen), "-p", str(port), "-f", str(workload),
                                "-c", "256", "-d", "5", "-S", "4", "--json"], capture_output=True, text=True, timeout=60)
            cpu = cpu_seconds(p.pid) - c0
            res = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"| {mode} | {res['qps']:,.0f} | {1e6 * cpu / max(1, res['received']):.2f} |", flush=True)
        finally:
            p.terminate()
            p.wait(10)
    return 0


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        mode, port = sys.argv[2], int(sys.argv[3])
        if mode == "asyncio":
            asyncio.run(serve(mode, port))
        else:
            import uvloop

            uvloop.run(serve(mode, port))
        return 0
    return run(int(sys.argv[2]) if len(sys.argv) > 2 else 5399)


if __name__ == "__main__":
    sys.exit(main())
