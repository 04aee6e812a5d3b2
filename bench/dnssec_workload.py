#!/usr/bin/env python3
"""Copy a bench workload (NAME.bin, NAME.tsv) as NAME-do: the same queries with the DO bit set.

Each query in NAME.bin is a 2-byte length and the message; the OPT record
follows the question (bench/dns/workload builds them so), and DO is the top
bit of its flags. Queries without OPT are copied unchanged.
"""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path


def with_do(query: bytes) -> bytes:
    arcount = struct.unpack_from("!H", query, 10)[0]
    if not arcount:
        return query
    pos = 12
    while query[pos]:
        pos += query[pos] + 1
    opt = pos + 5  # the root label, QTYPE, QCLASS
    if query[opt : opt + 3] != b"\x00\x00\x29":
        raise ValueError("OPT does not follow the question")
    flags = opt + 7  # root owner (1), type (2), class (2), extended rcode and version (2)
    return query[:flags] + bytes((query[flags] | 0x80,)) + query[flags + 1 :]


def main(folder: str, name: str) -> int:
    src, dst = Path(folder) / f"{name}.bin", Path(folder) / f"{name}-do.bin"
    data, out, pos = src.read_bytes(), bytearray(), 0
    while pos < len(data):
        (length,) = struct.unpack_from("!H", data, pos)
        query = with_do(data[pos + 2 : pos + 2 + length])
        out += struct.pack("!H", len(query)) + query
        pos += 2 + length
    dst.write_bytes(bytes(out))
    shutil.copy(Path(folder) / f"{name}.tsv", Path(folder) / f"{name}-do.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
