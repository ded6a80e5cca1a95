#!/usr/bin/env python3
# A dependency-free MySQL client for the benchmark: holds N idle authenticated sessions, or
# measures connection churn (connect, authenticate, one query, quit). mysql_native_password only.
"""Usage:
  mysqlclient.py idle HOST PORT N        open N sessions (one SELECT 1 each), print "ready",
                                         hold them until stdin closes
  mysqlclient.py churn HOST PORT SECONDS CONCURRENCY   print sessions completed per second
"""
import asyncio
import hashlib
import struct
import sys
import time

USER, PASSWORD, DB = b"app", b"secret", b"test"
CAPS = 0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x80000  # long pw, with db, 4.1, txn, secure, plugin


def native(scramble: bytes) -> bytes:
    h1 = hashlib.sha1(PASSWORD).digest()
    x = hashlib.sha1(scramble[:20] + hashlib.sha1(h1).digest()).digest()
    return bytes(a ^ b for a, b in zip(h1, x))


class Conn:
    def __init__(self, r, w):
        self.r, self.w = r, w

    async def read(self):
        h = await self.r.readexactly(4)
        n = h[0] | h[1] << 8 | h[2] << 16
        return h[3], await self.r.readexactly(n)

    def send(self, seq, payload):
        n = len(payload)
        self.w.write(bytes([n & 255, n >> 8 & 255, n >> 16, seq & 255]) + payload)

    async def query(self, sql: bytes):
        self.send(0, b"\x03" + sql)
        await self.w.drain()
        _, p = await self.read()
        if p[0] in (0x00, 0xFF):
            return
        ncols = p[0]
        for _ in range(ncols):
            await self.read()
        _, p = await self.read()  # EOF after the column definitions
        while True:
            _, p = await self.read()
            if p[0] == 0xFE and len(p) < 9 or p[0] == 0xFF:
                return

    async def quit(self):
        self.send(0, b"\x01")
        try:
            await self.w.drain()
        except OSError:
            pass
        self.w.close()


async def connect(host, port) -> Conn:
    r, w = await asyncio.open_connection(host, port)
    c = Conn(r, w)
    seq, g = await c.read()
    if g[0] == 0xFF:
        raise RuntimeError(g[3:].decode(errors="replace"))
    i = g.index(b"\0", 1) + 1 + 4
    scramble = g[i : i + 8]
    i += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
    scramble += g[i : i + 12]
    auth = native(scramble)
    resp = struct.pack("<IIB23x", CAPS, 1 << 24, 33) + USER + b"\0" + bytes([len(auth)]) + auth
    resp += DB + b"\0" + b"mysql_native_password\0"
    c.send(seq + 1, resp)
    await c.w.drain()
    while True:
        seq, p = await c.read()
        if p[0] == 0x00:
            return c
        if p[0] == 0xFF:
            raise RuntimeError(p[9:].decode(errors="replace"))
        if p[0] == 0xFE:  # auth switch: plugin name, then the new scramble
            j = p.index(b"\0", 1)
            c.send(seq + 1, native(p[j + 1 : j + 21]))
            await c.w.drain()
        else:
            raise RuntimeError(f"unexpected packet {p[:1].hex()} during authentication")


async def idle(host, port, n):
    conns = []
    gate = asyncio.Semaphore(64)

    async def one():
        async with gate:
            c = await connect(host, port)
            await c.query(b"SELECT 1")
            conns.append(c)

    await asyncio.gather(*(one() for _ in range(n)))
    print("ready", len(conns), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for c in conns:
        c.w.close()


async def churn(host, port, seconds, concurrency):
    done = 0
    end = time.monotonic() + seconds

    async def worker():
        nonlocal done
        while time.monotonic() < end:
            c = await connect(host, port)
            await c.query(b"SELECT 1")
            await c.quit()
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(f"{done / (time.monotonic() - start):.1f}", flush=True)


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "idle":
        asyncio.run(idle(host, port, int(sys.argv[4])))
    elif mode == "churn":
        asyncio.run(churn(host, port, float(sys.argv[4]), int(sys.argv[5])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
