"""One node per DNS address (`geodns.dns.claim`), with real sockets on loopback."""

from __future__ import annotations

import socket

import pytest
from netutil import free_port

from geodns.dns.claim import AddressInUse, claim
from geodns.dns.server import Listen

HOST = "127.0.3.77"


def reuseport(kind: int, host: str, port: int) -> socket.socket:
    """A socket bound as a node's workers bind theirs."""
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


def test_a_claim_is_held_until_released():
    port = free_port(HOST)
    held = claim([Listen(HOST, port)])
    try:
        with pytest.raises(AddressInUse, match=f"{HOST}:{port} is already served by another geodns serve"):
            claim([Listen(HOST, port)])
        # the node's own workers still bind the address with SO_REUSEPORT
        reuseport(socket.SOCK_DGRAM, HOST, port).close()
    finally:
        for sock in held:
            sock.close()
    for sock in claim([Listen(HOST, port)]):  # released: free again
        sock.close()


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_an_address_another_process_serves_is_refused(kind):
    port = free_port(HOST)
    with reuseport(kind, HOST, port):
        with pytest.raises(AddressInUse, match=rf"{HOST}:{port} \((UDP|TCP)\) is already in use"):
            claim([Listen(HOST, port)])
        # nothing is held after a refusal: a claim of a free address still works
        other = free_port(HOST)
        for sock in claim([Listen(HOST, other)]):
            sock.close()


def test_port_0_is_not_claimed():
    assert claim([Listen(HOST, 0)]) == []


def test_an_address_given_twice_is_claimed_once():
    port = free_port(HOST)
    held = claim([Listen(HOST, port), Listen(HOST, port)])
    try:
        assert len(held) == 1
    finally:
        for sock in held:
            sock.close()
