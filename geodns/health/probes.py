"""Active probes: one attempt at one check against one address.

`probe()` never raises for a failing target: every outcome, including a hang
cut at `check.timeout`, comes back as a `ProbeResult` with `ok=False` and a
one-line `detail` saying what was seen. The rise/fall machine
(`geodns.health.risefall`) turns a series of these into a view.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import time
from dataclasses import dataclass

import aiohttp

from geodns.config.model import Check
from geodns.health.lbstatus import POOL_KINDS, probe_pool

__all__ = ["ProbeResult", "probe", "probe_session", "probe_target", "DEFAULT_PORTS"]

DEFAULT_PORTS = {"http": 80, "https": 443, "dns": 53}

# Enough of a response body to find `body_contains` in a health page without
# letting a misbehaving backend make us buffer megabytes.
_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe."""

    ok: bool
    """True when the target passed the check."""
    detail: str
    """One line for logs and status: status code, error, or why it failed."""
    rtt: float
    """Seconds from the start of the probe to its outcome (timeout included)."""


def probe_target(check: Check, address: str) -> tuple[str, int | None]:
    """The host and port a check really talks to: `check.host`/`check.port` win
    over the endpoint's address, so a check can guard a public VIP while probing
    the balancer's health URL behind it."""
    host = check.host or address
    port = check.port if check.port is not None else DEFAULT_PORTS.get(check.kind)
    return host, port


async def probe(
    check: Check,
    address: str,
    session: aiohttp.ClientSession | None = None,
    *,
    source: str | None = None,
) -> ProbeResult:
    """Run `check` once against `address` (an IP address or host name).

    `session` lets a scheduler reuse one connection pool for many probes; when
    None, an http(s) probe opens and closes its own. `source` binds tcp, dns
    and self-opened http(s) probes to a local address (a shared session
    carries its own, see `probe_session`).
    """
    start = time.monotonic()
    runner = _RUNNERS.get(check.kind)
    if runner is None:
        return ProbeResult(False, f"unknown check kind {check.kind!r}", 0.0)
    try:
        async with asyncio.timeout(check.timeout):
            ok, detail = await runner(check, address, session, source)
    except TimeoutError:
        ok, detail = False, f"timeout after {check.timeout:g}s"
    except Exception as e:  # noqa: BLE001 - any failure of the target is a failed probe
        ok, detail = False, _describe(e)
    return ProbeResult(ok=ok, detail=detail, rtt=time.monotonic() - start)


def probe_session(limit: int = 100, source: str | None = None) -> aiohttp.ClientSession:
    """A client session fit for probes: no keep-alive (a pooled connection would
    hide a backend that stopped accepting), no proxy from the environment."""
    connector = aiohttp.TCPConnector(
        force_close=True, limit=limit, local_addr=(source, 0) if source else None
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}".splitlines()[0][:200]


def _hostport(host: str, port: int | None) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return host if port is None else f"{host}:{port}"


async def _http(
    check: Check, address: str, session: aiohttp.ClientSession | None, source: str | None
) -> tuple[bool, str]:
    host, port = probe_target(check, address)
    url = f"{check.kind}://{_hostport(host, port)}{check.path if check.path.startswith('/') else '/' + check.path}"
    headers = {"User-Agent": "geodns-health/1", "Connection": "close"}
    kwargs: dict = {"headers": headers, "allow_redirects": False}
    if check.host_header:
        headers["Host"] = check.host_header
        if check.kind == "https":
            # Verify the certificate against the name the service answers to,
            # not the bare IP we connect to.
            kwargs["server_hostname"] = check.host_header.split(":")[0]
    if check.kind == "https" and not check.verify_tls:
        kwargs["ssl"] = False
    own = session is None
    if own:
        session = probe_session(source=source)
    assert session is not None
    try:
        async with session.request(check.method, url, **kwargs) as resp:
            status = resp.status
            body = b""
            if check.body_contains is not None:
                body = await resp.content.read(_BODY_LIMIT)
    finally:
        if own:
            await session.close()
    if status not in check.expect_status:
        expected = ",".join(map(str, check.expect_status))
        return False, f"HTTP {status} (expected {expected})"
    if check.body_contains is not None and check.body_contains.encode() not in body:
        return False, f"HTTP {status} body lacks {check.body_contains!r}"
    return True, f"HTTP {status}"


async def _tcp(
    check: Check, address: str, session: aiohttp.ClientSession | None, source: str | None
) -> tuple[bool, str]:
    host, port = probe_target(check, address)
    if port is None:
        return False, "tcp check without a port"
    local = (source, 0) if source else None
    _, writer = await asyncio.open_connection(host, port, local_addr=local)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"connected to {_hostport(host, port)}"


async def _dns(
    check: Check, address: str, session: aiohttp.ClientSession | None, source: str | None
) -> tuple[bool, str]:
    import dns.asyncquery
    import dns.exception
    import dns.message
    import dns.rcode

    host, port = probe_target(check, address)
    qname = check.qname or "."
    query = dns.message.make_query(qname, "SOA" if qname == "." else "A")
    try:
        # dnspython wants an IP address; the timeout here is a backstop, the
        # asyncio.timeout around the probe is the one that counts.
        response = await dns.asyncquery.udp(
            query, host, port=port or 53, timeout=check.timeout, source=source
        )
    except dns.exception.DNSException as e:
        return False, _describe(e)
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        return False, f"rcode {dns.rcode.to_text(rcode)} for {qname}"
    return True, f"NOERROR for {qname}, {sum(len(r) for r in response.answer)} answers"


EXEC_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
"""The only variables an `exec` command gets from the node's environment (which may hold the
admin token or the peers' secret), besides GEODNS_ADDRESS and GEODNS_PORT."""

EXEC_OUTPUT_LIMIT = 64 * 1024
"""Bytes of a command's output read at most; past it the pipe is closed (the command gets
SIGPIPE on its next write, as under `| head -c`)."""


def exec_environment(host: str, port: int | None) -> dict[str, str]:
    """The environment of an `exec` command: `EXEC_ENVIRONMENT` from ours, and what it checks."""
    env = {name: os.environ[name] for name in EXEC_ENVIRONMENT if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env["GEODNS_ADDRESS"] = host
    env["GEODNS_PORT"] = "" if port is None else str(port)
    return env


async def _exec(
    check: Check, address: str, session: aiohttp.ClientSession | None, source: str | None
) -> tuple[bool, str]:
    if not check.command:
        return False, "exec check without a command"
    host, port = probe_target(check, address)
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        # A session (and process group) of its own, so that whatever it starts can be
        # killed with it: a timed-out `curl` behind a shell wrapper must not linger.
        proc = await asyncio.create_subprocess_exec(
            *check.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            env=exec_environment(host, port),
            start_new_session=True,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    output = asyncio.StreamReader(limit=EXEC_OUTPUT_LIMIT + 1)
    pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(output), os.fdopen(read_end, "rb", 0))
    reading = asyncio.ensure_future(_read_at_most(output, EXEC_OUTPUT_LIMIT, pipe))
    try:
        await proc.wait()
        _kill_group(proc.pid)  # what it left running may not outlive it, nor hold the pipe open
        out, over = await reading
    except BaseException:  # the probe's timeout (CancelledError), or the node stopping
        _kill_group(proc.pid)
        if proc.returncode is None:
            await asyncio.shield(proc.wait())
        raise
    finally:
        reading.cancel()
        pipe.close()
    last = out.decode(errors="replace").strip().splitlines()[-1:] if out else []
    tail = f": {last[0][:120]}" if last else ""
    if over:
        tail = f" (output over {EXEC_OUTPUT_LIMIT} bytes, pipe closed){tail}"
    if proc.returncode == 0:
        return True, f"exit 0{tail}"
    if proc.returncode < 0:
        return False, f"killed by {_signal_name(-proc.returncode)}{tail}"
    return False, f"exit {proc.returncode}{tail}"


async def _read_at_most(stream: asyncio.StreamReader, limit: int, pipe: asyncio.BaseTransport) -> tuple[bytes, bool]:
    """Up to `limit` bytes until EOF, and whether there was more (the pipe is then closed)."""
    data = bytearray()
    while chunk := await stream.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            pipe.close()
            return bytes(data[:limit]), True
    return bytes(data), False


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_RUNNERS = {"http": _http, "https": _http, "tcp": _tcp, "dns": _dns, "exec": _exec}
_RUNNERS.update(dict.fromkeys(POOL_KINDS, probe_pool))  # a balancer's own status page
