"""The long fuzz run: query parsers, answer path, GeoIP tree walk and a live server, under AddressSanitizer.

The suite's tests/dns/test_parser_fuzz.py runs a few seconds of the same checks in CI; this runs
them for as long as you give it. From the repository root:

    nice -n 19 python3 tests/fuzz_long.py --minutes 60 --out /tmp/geodns-fuzz

Steps:

1. Builds the three C extensions with AddressSanitizer (`-fsanitize=address`, and with clang and
   atheris also `fuzzer-no-link`, so that libFuzzer sees the C code's coverage) into OUT/build,
   a directory of their own: the .so files beside the sources are not replaced.
2. Runs each target in a child process that loads those builds in place of the normal ones, the
   ASan runtime preloaded (atheris's `asan_with_fuzzer.so` with clang, the compiler's
   `libasan.so` otherwise). The time is shared: packet 45 %, mmdb 35 %, server 20 %.
   - packet: `_scan.c` against `scan_common` and the full parser, and answer() with the C
     scan and patch against the Python ones (tests/fuzzing.py says what must agree);
   - mmdb: corrupt GeoIP files through `_tree.c` (`Tree`, `find`, `record`, `place`), checked
     against maxminddb's own reader and `location_from_record` wherever both read the file;
   - server: a live `geodns serve` on 127.0.9.x running the ASan builds, sent mutated packets
     over UDP and TCP in batches, each batch followed by a normal query it must answer.
3. Engine: atheris (coverage-guided libFuzzer) for half of packet's and mmdb's time when
   `import atheris` works, a seeded mutation loop that keeps inputs of new outcomes for the
   other half (about 10x more inputs a second) and for server.
4. A crash (an ASan report, a signal) or a disagreement is saved in OUT/findings/ with its input
   and the report; the child is started again with the next seed until the target's time is up.
   At the end: a table of inputs tried, crashes and disagreements per target (OUT/summary.json).

Options: `--targets packet,mmdb` to choose, `--engine loop` to skip atheris, `--cc gcc` to
build with gcc (no C coverage for libFuzzer then), `--seed N`.
Replay a saved input with the normal builds: `python3 tests/fuzz_long.py --replay FILE`
(the file name says the target: packet-..., mmdb-...).

Needs a C compiler (clang preferred: `apt-get install clang`) and, for the coverage-guided
engine, `pip install atheris`. docs/fuzzing.md has the last run's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import ipaddress
import json
import mmap
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARES = {"packet": 0.45, "mmdb": 0.35, "server": 0.20}
ASAN_OPTIONS = (
    "detect_leaks=0:allocator_may_return_null=1:handle_segv=1:handle_abort=1:symbolize=1"
    # The interpreter's many allocation stacks would grow ASan's stack depot and quarantine
    # to GBs in an hour; 10 frames of allocation history are enough to place a C bug.
    ":malloc_context_size=10:quarantine_size_mb=64"
)
LAST_INPUT_SIZE = 1 << 20
"""The child writes each input here before trying it: what a crash leaves to be saved."""
MAX_MMDB = 64 * 1024


# ---- Parent: build, run the children, collect ----


def build(out: Path, cc: str, coverage: bool) -> Path:
    """The extensions with ASan, built into out/build/lib; returns that directory."""
    lib, temp = out / "build" / "lib", out / "build" / "temp"
    shutil.rmtree(out / "build", ignore_errors=True)
    flags = "-fsanitize=address" + (",fuzzer-no-link" if coverage else "")
    env = dict(os.environ)
    env.update(
        CC=cc,
        LDSHARED=f"{cc} -shared",
        CFLAGS=f"{flags} -fno-omit-frame-pointer -g -O1",
        LDFLAGS=flags,
    )
    subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(lib),
            "--build-temp",
            str(temp),
        ],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    built = sorted(glob.glob(str(lib / "geodns" / "**" / "*.so"), recursive=True))
    if len(built) < 3:
        raise SystemExit(f"the ASan build made {built}, not the three extensions")
    return lib


def asan_runtime(cc: str, coverage: bool) -> str:
    if coverage:
        import atheris

        return os.path.join(atheris.path(), "asan_with_fuzzer.so")
    name = "libclang_rt.asan-x86_64.so" if "clang" in cc else "libasan.so"
    path = subprocess.run(
        [cc, f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(path):
        raise SystemExit(f"{cc} has no {name}: install its ASan runtime")
    return path


def have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


def run_target(target: str, engine: str, seconds: float, seed: int, out: Path, env: dict) -> dict:
    """Children for `target` until `seconds` are spent; each crash is saved and the next seed runs."""
    totals = {
        "target": target,
        "engine": engine,
        "inputs": 0,
        "crashes": 0,
        "disagreements": 0,
        "children": 0,
    }
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 5:
        work = out / "work" / f"{target}-{seed}"
        work.mkdir(parents=True, exist_ok=True)
        log = work / "child.log"
        cmd = [sys.executable, __file__, "--child", target, "--engine", engine, "--seconds", f"{left:.0f}",
               "--seed", str(seed), "--out", str(out)]  # fmt: skip
        with open(log, "wb") as sink:
            proc = subprocess.run(
                cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False
            )
        stats = child_stats(work, log, engine)
        totals["children"] += 1
        totals["inputs"] += stats.get("inputs", 0)
        totals["disagreements"] += stats.get("disagreements", 0)
        if proc.returncode != 0:
            kind = save_crash(target, seed, work, log, out)
            totals["crashes" if kind == "crash" else "disagreements"] += 1
        seed += 1
    return totals


def child_stats(work: Path, log: Path, engine: str) -> dict:
    stats = {}
    with contextlib.suppress(OSError, ValueError):
        stats = json.loads((work / "stats.json").read_text())
    if engine == "atheris":  # libFuzzer counts its runs: "#1234 NEW ..." and "Done 1234 runs"
        text = log.read_text(errors="replace")
        runs = [
            int(n)
            for n in re.findall(r"^#(\d+)\s", text, re.M) + re.findall(r"Done (\d+) runs", text)
        ]
        stats["inputs"] = max(runs, default=0)
    return stats


def save_crash(target: str, seed: int, work: Path, log: Path, out: Path) -> str:
    """Keep the report and the input a child died on; "crash" (ASan, a signal, a dead server)
    or "disagreement" (a check failed under atheris, which stops at the first)."""
    text = log.read_text(errors="replace")
    python_only = "Uncaught Python exception" in text and "AddressSanitizer" not in text
    kind = "disagreement" if python_only and "the server" not in text else "crash"
    findings = out / "findings"
    findings.mkdir(parents=True, exist_ok=True)
    stem = findings / f"{target}-{kind}-{seed}"
    shutil.copy(log, stem.with_suffix(".log"))
    last = work / "last-input"
    if last.exists():
        raw = last.read_bytes()
        (length,) = struct.unpack_from("!I", raw)
        stem.with_suffix(".bin").write_bytes(raw[4 : 4 + length])
    print(f"{kind} in {target} (seed {seed}): {stem}.log", flush=True)
    return kind


def parent(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cc = args.cc or ("clang" if shutil.which("clang") else "gcc")
    engine = args.engine if args.engine != "auto" else ("atheris" if have_atheris() else "loop")
    coverage = "clang" in cc and have_atheris()
    started = time.monotonic()
    lib = build(out, cc, coverage)
    # Every interpreter of the run (children, the server, its workers) loads the ASan builds
    # at start: a sitecustomize on PYTHONPATH does it before anything imports geodns.
    boot = out / "build" / "boot"
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "sitecustomize.py").write_text(
        '"""Written by tests/fuzz_long.py: the ASan builds of the extensions, in every process."""\n'
        f"import os, sys\nsys.path.insert(0, {str(TESTS)!r})\nimport fuzz_long\n"
        'fuzz_long.use_builds(os.environ["GEODNS_FUZZ_BUILD"])\n'
    )
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=asan_runtime(cc, coverage),
        ASAN_OPTIONS=ASAN_OPTIONS,
        GEODNS_FUZZ_BUILD=str(lib),
        PYTHONPATH=os.pathsep.join(p for p in (str(boot), str(REPO), env.get("PYTHONPATH")) if p),
    )
    targets = [t for t in args.targets.split(",") if t]
    total = args.minutes * 60 - (time.monotonic() - started)
    share = sum(SHARES[t] for t in targets)
    print(
        f"cc={cc} coverage={coverage} engine={engine} build={lib} minutes={args.minutes}",
        flush=True,
    )
    plan = []
    for target in targets:
        seconds = total * SHARES[target] / share
        if engine == "atheris" and target != "server":
            # libFuzzer finds new paths; the loop tries ~10x more inputs a second: half each.
            plan += [(target, "atheris", seconds / 2), (target, "loop", seconds / 2)]
        else:
            plan.append((target, "loop", seconds))
    rows = []
    for i, (target, target_engine, seconds) in enumerate(plan):
        row = run_target(target, target_engine, seconds, args.seed + 1000 * i, out, env)
        row["seconds"] = round(seconds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "cc": cc,
        "asan": True,
        "coverage": coverage,
        "minutes": args.minutes,
        "targets": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\n{'target':8} {'engine':8} {'seconds':>8} {'inputs':>11} {'crashes':>8} {'disagree':>8}"
    )
    for r in rows:
        print(
            f"{r['target']:8} {r['engine']:8} {r['seconds']:8} {r['inputs']:11} {r['crashes']:8} {r['disagreements']:8}"
        )
    findings = sorted((out / "findings").glob("*")) if (out / "findings").exists() else []
    print(
        f"findings: {len(findings)} files in {out / 'findings'}" if findings else "findings: none"
    )
    return 1 if any(r["crashes"] or r["disagreements"] for r in rows) else 0


# ---- Child: one target, one seed, with the ASan builds ----


def use_builds(lib: str) -> None:
    """Load the extensions from `lib` under their package names, before anything imports them."""
    for path in glob.glob(os.path.join(lib, "geodns", "**", "*.so"), recursive=True):
        rel = os.path.relpath(path, lib)
        name = rel.split(".", 1)[0].replace(os.sep, ".")
        if name in sys.modules:
            continue  # loaded at this interpreter's start (sitecustomize)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


class Recorder:
    """The input about to be tried, in a mapped file: a crash cannot lose it."""

    def __init__(self, work: Path):
        path = work / "last-input"
        with open(path, "wb") as f:
            f.truncate(LAST_INPUT_SIZE)
        self._file = open(path, "r+b")  # noqa: SIM115 - held for the child's lifetime
        self._map = mmap.mmap(self._file.fileno(), LAST_INPUT_SIZE)

    def __call__(self, data: bytes) -> None:
        n = min(len(data), LAST_INPUT_SIZE - 4)
        self._map[:4] = struct.pack("!I", n)
        self._map[4 : 4 + n] = data[:n]


class Fatal(Exception):
    """A failure the child cannot go on from."""


class Findings:
    """Disagreements and unexpected exceptions, saved and counted; the run goes on."""

    def __init__(self, out: Path, target: str, seed: int):
        self.dir = out / "findings"
        self.prefix = f"{target}-{seed}"
        self.count = 0
        self.seen: set[str] = set()

    def add(self, data: bytes, exc: BaseException) -> None:
        self.count += 1
        what = f"{type(exc).__name__}: {str(exc)[:300]}"
        key = re.sub(r"[0-9a-f]{16,}", "", what)[:120]
        if key in self.seen or len(self.seen) > 50:
            return  # the same finding again: counted, not saved
        self.seen.add(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self.dir / f"{self.prefix}-{len(self.seen)}"
        stem.with_suffix(".bin").write_bytes(data)
        stem.with_suffix(".txt").write_text(what + "\n")
        print(f"finding: {what[:200]}", flush=True)


def write_stats(work: Path, **stats) -> None:
    tmp = work / "stats.json.tmp"
    tmp.write_text(json.dumps(stats))
    tmp.replace(work / "stats.json")


def child(args: argparse.Namespace) -> int:
    lib = os.environ.get("GEODNS_FUZZ_BUILD")
    if lib:
        use_builds(lib)
    out = Path(args.out)
    work = out / "work" / f"{args.child}-{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    record = Recorder(work)
    findings = Findings(out, args.child, args.seed)
    sys.path.insert(0, str(TESTS))
    if args.engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["geodns.dns.wire", "geodns.geo.database"]):
            import geodns.dns.wire  # noqa: F401
            import geodns.geo.database  # noqa: F401
    check_builds(lib)
    target = {"packet": PacketTarget, "mmdb": MmdbTarget, "server": ServerTarget}[args.child](
        work, args.seed
    )
    deadline = time.monotonic() + args.seconds
    if args.engine == "atheris":
        return fuzz_atheris(target, work, out, args, record)
    rng = random.Random(args.seed)
    n = 0
    next_report = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            data = target.generate(rng)
            record(data)
            try:
                target.check(data)
            except Fatal as exc:  # the server is gone: the parent starts the next seed
                findings.add(data, exc)
                return 2
            except Exception as exc:  # noqa: BLE001 - every failure is a finding; the run goes on
                findings.add(data, exc)
            n += 1
            if time.monotonic() > next_report:
                write_stats(work, inputs=n, disagreements=findings.count)
                next_report = time.monotonic() + 5
    finally:
        target.close()
        write_stats(work, inputs=n, disagreements=findings.count)
    return 0


def check_builds(lib: str | None) -> None:
    """The ASan builds are the ones in use (a stray import of the normal .so would fuzz those)."""
    from geodns.dns import wire
    from geodns.geo import database

    if lib:
        for module in (wire._c_scan, database._Tree):
            path = getattr(module, "__file__", None) or sys.modules[module.__module__].__file__
            assert path.startswith(lib), (
                f"{module} was loaded from {path}, not the ASan build in {lib}"
            )


def fuzz_atheris(target, work: Path, out: Path, args: argparse.Namespace, record) -> int:
    import atheris

    corpus = out / "corpus" / args.child
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(target.seeds()):
        path = corpus / f"seed-{i}"
        if not path.exists():
            path.write_bytes(data)
    findings = out / "findings"
    findings.mkdir(parents=True, exist_ok=True)

    def one(data: bytes) -> None:
        record(data)
        target.check(data)

    argv = [sys.argv[0], str(corpus), f"-max_total_time={int(args.seconds)}", f"-seed={args.seed}",
            f"-artifact_prefix={findings}/{args.child}-{args.seed}-", f"-max_len={target.max_len}",
            "-timeout=20", "-rss_limit_mb=4096", "-print_final_stats=1", "-reload=0"]  # fmt: skip
    atheris.Setup(argv, one)
    try:
        atheris.Fuzz()
    finally:
        target.close()
    return 0


# ---- Targets ----


class PacketTarget:
    """Packets at the C and Python parsers, and at answer() with each build's scan and patch."""

    max_len = 4096

    def __init__(self, work: Path, seed: int):
        import fuzzing

        from geodns.control.controller import Controller

        self.fuzzing = fuzzing
        self.pool = fuzzing.seeds()
        self.signatures: set = set()
        snaps = []
        for _ in range(2):  # one each: weighted names keep their turn in what snapshots share
            c = Controller(
                str(REPO / "zones" / "example.yaml"), str(REPO / "data" / "geoip-bundle.mmdb")
            )
            c.start()
            snaps.append(c.snapshot)
        self.c_snap, self.py_snap = snaps
        self.clients = ("127.0.0.1", "81.2.69.160", "2001:db8::1", "175.16.199.7")
        for client in self.clients:  # cookies this process's secret makes valid for them
            self.pool += fuzzing.cookie_seeds(client)
        self.n = 0

    def seeds(self) -> list[bytes]:
        return self.pool

    def generate(self, rng: random.Random) -> bytes:
        return self.fuzzing.mutate(rng, self.pool)

    def check(self, data: bytes) -> None:
        got = self.fuzzing.check_parsers(data)
        self.n += 1
        if self.n % 4 == 0:
            client = self.clients[data[-1] % len(self.clients)] if data else self.clients[0]
            self.fuzzing.check_answers(data, self.c_snap, self.py_snap, client)
        # A cheap feedback for the loop: keep an input whose outcome is new.
        if isinstance(got, tuple):
            signature = got[:2]
        else:
            edns = got.edns
            signature = (
                "query",
                got.qtype,
                edns is not None,
                edns is not None and edns.ecs is not None,
            )
        if signature not in self.signatures and len(self.pool) < 5000:
            self.signatures.add(signature)
            self.pool.append(data)

    def close(self) -> None:
        pass


class MmdbTarget:
    """Corrupt GeoIP files at the C tree walk and decoder, against maxminddb's own reader."""

    max_len = MAX_MMDB

    def __init__(self, work: Path, seed: int):
        import maxminddb
        from geodns.geo._tree import Tree

        from geodns.geo import database

        self.maxminddb, self.database, self.Tree = maxminddb, database, Tree
        self.work = work
        self.bases = [p.read_bytes() for p in base_databases(work / "bases")]
        rng = random.Random(seed)
        self.addresses = [ipaddress.ip_address(a).packed for a in ADDRESSES]
        self.addresses += [rng.randbytes(4) for _ in range(24)] + [
            rng.randbytes(16) for _ in range(8)
        ]
        self.addresses.append(b"\x20\x02" + bytes([81, 2, 69, 7]) + bytes(10))  # 6to4
        self.path = work / "current.mmdb"
        self.counts = {"tree": 0, "prefix": 0, "record": 0, "place": 0}
        """How many files the walk opened, and how many lookups were compared with each reference."""

    def seeds(self) -> list[bytes]:
        return self.bases

    def generate(self, rng: random.Random) -> bytes:
        return mutate_mmdb(rng, rng.choice(self.bases))

    def check(self, data: bytes) -> None:
        maxminddb, Tree = self.maxminddb, self.Tree
        self.path.write_bytes(data)
        try:
            reader = maxminddb.open_database(str(self.path), maxminddb.MODE_MEMORY)
            meta = reader.metadata()
            params = (meta.node_count, meta.record_size, meta.ip_version)
        except Exception:  # noqa: BLE001 - maxminddb refuses what it will: the C walk gets guesses
            reader, params = None, None
        if (
            params is None
            or not all(isinstance(p, int) and p >= 0 for p in params)
            or params[0] >= 1 << 64
        ):
            # Metadata maxminddb cannot read: the C walk still must not crash on any parameters.
            params = (
                len(data) // 6 if data else 0,
                (24, 28, 32)[len(data) % 3],
                (4, 6)[len(data) % 2],
            )
            reader = None
        try:
            tree = Tree(data, *params)
        except (ValueError, OverflowError):
            return
        self.counts["tree"] += 1
        for packed in self.addresses:
            self._one(tree, reader, packed)
        if reader is not None and params[1] in (24, 28, 32):
            self._database(reader)

    def _one(self, tree, reader, packed: bytes) -> None:
        try:
            value, prefix = tree.find(packed)
        except ValueError:
            return
        want = None
        if reader is not None and packed[:2] != b"\x20\x02":
            try:
                want = reader.get_with_prefix_len(str(ipaddress.ip_address(packed)))
            except Exception:  # noqa: BLE001 - maxminddb refuses it: nothing to compare
                want = None
        if want is not None:
            assert prefix == want[1], f"prefix {prefix} != maxminddb {want[1]} for {packed.hex()}"
            assert (value is None) == (want[0] is None), f"record {value} vs maxminddb {want[0]!r}"
            self.counts["prefix"] += 1
        if value is None:
            return
        try:
            record = tree.record(value)
        except (ValueError, OverflowError, RecursionError):
            record = None
        if record is not None and want is not None:
            assert repr(record) == repr(want[0]), f"C record {record!r} != maxminddb {want[0]!r}"
            self.counts["record"] += 1
        try:
            fields = tree.place(value)
        except (ValueError, OverflowError, RecursionError):
            return
        if fields is not None:
            assert len(fields) == 7
            if record is not None:  # place may read a record that record() refuses; not the reverse
                db = self.database
                assert db.location_from_fields(*fields) == db._location_of(record), (
                    f"place {fields!r} != location_from_record {record!r}"
                )
                self.counts["place"] += 1

    def _database(self, reader) -> None:
        """The whole GeoDatabase (C walk and the Python finish) on a file maxminddb opens."""
        db = self.database
        try:
            geo = db.GeoDatabase(str(self.path))
        except db.GeoDatabaseError:
            return
        try:
            for packed in self.addresses[:16]:
                # A corrupt record raises ValueError: the answer path answers SERVFAIL and logs it.
                with contextlib.suppress(ValueError, OverflowError, RecursionError):
                    geo.lookup(ipaddress.ip_address(packed))
        finally:
            geo.close()

    def close(self) -> None:
        pass


ADDRESSES = ["81.2.69.7", "81.2.69.200", "8.8.8.8", "175.16.199.1", "1.0.16.1", "89.160.20.129", "2001:db8::1",
             "2001:db8:1200::1", "2a02:ff00::1", "::1", "0.0.0.0", "255.255.255.255", "10.0.0.1", "198.51.100.9"]  # fmt: skip
NETWORKS = {
    "81.2.69.0/24": dict(lat=51.5, lon=-0.09, country="GB", continent="EU", subdivision="ENG", city="London",
                         state="England"),
    "175.16.199.0/24": dict(lat=43.88, lon=125.32, country="CN", continent="AS", state="Jilin"),
    "89.160.20.128/25": dict(lat=58.4, lon=15.6, country="SE", continent="EU", city="Linkoping"),
    "1.0.16.0/20": dict(lat=35.7, lon=139.7, country="JP", continent="AS", subdivision="JP-13"),
    "2001:db8:1200::/40": dict(lat=-23.5, lon=-46.6, country="BR", continent="SA", city="Sao Paulo"),
}  # fmt: skip


def base_databases(where: Path) -> list[Path]:
    """Small well-formed files of every schema, IP version and record size the walk reads."""
    from geo.mmdb_files import write_city_db, write_country_db, write_dbip_flat_db

    where.mkdir(parents=True, exist_ok=True)
    v4 = {k: v for k, v in NETWORKS.items() if ":" not in k}
    paths = [
        write_city_db(where / "city6.mmdb", NETWORKS),
        write_city_db(where / "city4.mmdb", v4, ip_version=4),
        write_country_db(where / "country6.mmdb", NETWORKS),
        write_dbip_flat_db(where / "dbip6.mmdb", NETWORKS),
    ]
    for size in (28, 32):
        path = where / f"city6-{size}.mmdb"
        path.write_bytes(with_record_size(paths[0].read_bytes(), size))
        paths.append(path)
    return paths


METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


def with_record_size(data: bytes, size: int) -> bytes:
    """A 24-bit-record file rewritten with `size`-bit records (record values are relative to the
    node count, so only the tree and the metadata's record_size change)."""
    meta_at = data.rindex(METADATA_MARKER)
    key = data.index(b"record_size", meta_at) + len(b"record_size")
    assert data[key : key + 2] == b"\xa1\x18", "record_size 24 stored as a one-byte uint16"
    count_key = data.index(b"node_count", meta_at) + len(b"node_count")
    ctrl = data[count_key]
    node_count = int.from_bytes(data[count_key + 1 : count_key + 1 + (ctrl & 0x1F)], "big")
    tree = bytearray()
    for i in range(node_count):
        left = int.from_bytes(data[i * 6 : i * 6 + 3], "big")
        right = int.from_bytes(data[i * 6 + 3 : i * 6 + 6], "big")
        if size == 32:
            tree += left.to_bytes(4, "big") + right.to_bytes(4, "big")
        else:
            middle = ((left >> 24) << 4) | (right >> 24)
            tree += left.to_bytes(4, "big")[1:] + bytes([middle]) + right.to_bytes(4, "big")[1:]
    rest = bytearray(data[node_count * 6 :])
    key_in_rest = key - node_count * 6
    rest[key_in_rest + 1] = size
    return bytes(tree) + bytes(rest)


MMDB_INTERESTING = (0x00, 0xFF, 0x20, 0x27, 0x3F, 0x40, 0x5D, 0x5E, 0x5F, 0x7F, 0x80, 0xC0, 0xE0, 0xE1, 0xFF,
                    0x01, 0x04, 0x07, 0x0C)  # fmt: skip
"""Control bytes: pointers of each size, strings with extended lengths, maps, extended types."""


def mutate_mmdb(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    meta_at = base.rfind(METADATA_MARKER)
    for _ in range(rng.randrange(1, 8)):
        if not data:
            break
        if rng.random() < 0.15 and 0 < meta_at < len(data):  # the metadata
            i = rng.randrange(meta_at, len(data))
        else:
            i = rng.randrange(len(data))
        op = rng.randrange(8)
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i] = rng.choice(MMDB_INTERESTING)
        elif op == 2:
            data[i] = rng.randrange(256)
        elif op == 3:  # a record or a length at its extremes
            width = rng.choice((3, 4))
            data[i : i + width] = rng.choice(
                (b"\xff" * width, b"\x00" * width, rng.randbytes(width))
            )
        elif op == 4 and rng.random() < 0.3:  # truncate
            del data[i:]
        elif op == 5:
            data[i:i] = rng.randbytes(rng.randrange(1, 16))
        elif op == 6:  # copy a slice elsewhere (a pointer into the middle of something)
            j = rng.randrange(len(data))
            data[i : i + 8] = data[j : j + 8]
        elif op == 7:
            del data[i : i + rng.randrange(1, 16)]
    return bytes(data[:MAX_MMDB])


class ServerTarget:
    """A live `geodns serve` with the ASan builds; mutated packets over UDP and TCP in batches."""

    max_len = 4096

    def __init__(self, work: Path, seed: int):
        import fuzzing
        from netutil import free_port

        self.fuzzing = fuzzing
        self.pool = fuzzing.seeds()
        self.host = f"127.0.9.{seed % 200 + 20}"
        self.port = free_port(self.host)
        self.log = work / "server.log"
        self.normal = fuzzing.query(
            fuzzing.name_wire("www.gslb.example.test"), 1, (fuzzing.opt_rr(),), qid=0xFFFF
        )
        # The ASan builds come with the run's sitecustomize, in the workers' interpreters too.
        args = [sys.executable, "-m", "geodns", "serve", "--zones", str(REPO / "zones"),
                "--geoip", str(REPO / "data" / "geoip-bundle.mmdb"), "--admin", "none",
                "--listen", f"{self.host}:{self.port}"]  # fmt: skip
        with open(self.log, "wb") as sink:
            self.proc = subprocess.Popen(args, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 120  # an ASan build starts slowly
        while not self._answers(timeout=0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server did not start:\n{self.log.read_text(errors='replace')[-3000:]}"
                )
        self.batch: list[bytes] = []
        self.batches = 0
        lib = os.environ.get("GEODNS_FUZZ_BUILD")
        if lib:  # the server and each worker run the ASan builds (sitecustomize loaded them)
            for pid in [self.proc.pid, *children_of(self.proc.pid)]:
                maps = Path(f"/proc/{pid}/maps").read_text()
                assert f"{lib}/geodns/dns/_scan" in maps, (
                    f"process {pid} runs without the ASan _scan"
                )

    def seeds(self) -> list[bytes]:
        return self.pool

    def generate(self, rng: random.Random) -> bytes:
        return self.fuzzing.mutate(rng, self.pool)

    def check(self, data: bytes) -> None:
        self.batch.append(data)
        if len(self.batch) < 50:
            return
        batch, self.batch = self.batch, []
        self.batches += 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in batch:
                s.sendto(p, (self.host, self.port))
        if self.batches % 5 == 0:  # every fifth batch over one TCP connection, then hang up
            stream = b"".join(struct.pack("!H", len(p)) + p for p in batch)
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as t:
                    t.sendall(stream)
                    t.settimeout(0.2)
                    while t.recv(65535):
                        pass
            except OSError:
                pass  # the server may close a connection that sent junk
        try:
            self._healthy()
        except AssertionError as exc:
            saved = self.log.with_name(f"batch-{self.batches}.bin")
            saved.write_bytes(b"".join(struct.pack("!H", len(p)) + p for p in batch))
            raise Fatal(f"after the batch in {saved} (framed): {exc}") from None

    def _answers(self, timeout: float) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.sendto(self.normal, (self.host, self.port))
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    response = s.recv(65535)
                    if response[:2] == b"\xff\xff":
                        return response[3] & 0xF == 0
            except OSError:
                return False
        return False

    def _healthy(self) -> None:
        assert self.proc.poll() is None, (
            f"the server stopped:\n{self.log.read_text(errors='replace')[-3000:]}"
        )
        ok = any(self._answers(timeout=2) for _ in range(3))
        assert ok, "the server no longer answers a normal query"
        text = self.log.read_text(errors="replace")
        for bad in ("AddressSanitizer", "Traceback", "worker exited unexpectedly"):
            assert bad not in text, text[-3000:]

    def close(self) -> None:
        try:
            self._healthy()
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    found = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in Path(task).read_text().split()]
    return found


# ---- Replay ----


def replay(path: Path) -> int:
    """Run one saved input through its target's checks with whatever extensions import."""
    sys.path.insert(0, str(TESTS))
    target = path.name.split("-", 1)[0]
    data = path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        checker = {"packet": PacketTarget, "mmdb": MmdbTarget}[target](Path(tmp), 0)
        checker.n = 3 if target == "packet" else 0  # packet: check the answers too
        try:
            checker.check(data)
        except Exception as exc:  # noqa: BLE001 - print what the run saw
            print(f"{target}: {type(exc).__name__}: {exc}")
            return 1
    print(f"{target}: {path} passes its checks")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "geodns-fuzz"))
    p.add_argument("--targets", default="packet,mmdb,server")
    p.add_argument("--engine", choices=("auto", "atheris", "loop"), default="auto")
    p.add_argument(
        "--cc", help="the compiler for the ASan build (default: clang when found, else gcc)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--replay", type=Path, help="check one saved input and stop")
    p.add_argument("--child", choices=tuple(SHARES), help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.child:
        return child(args)
    if sysconfig.get_config_var("Py_DEBUG"):
        print("note: a debug build of Python; ASan reports in the interpreter itself are not ours")
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
