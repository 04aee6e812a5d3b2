#!/bin/sh
# geodns side by side with gdnsd on loopback: same zone, same five regions,
# same GeoIP file, same queries (real client networks with ECS), each answer
# checked. Prints a table of queries/s, queries per server core-second, loss,
# p99 and the ratio, for the main, hot and miss workloads, then geodns with
# 1 vs 2 workers. Method: bench/dns/compare (alternating turns, fresh server
# per turn, server pinned to CPU 0, load generator to CPU 1). See
# bench/RESULTS.md for a run and how to read it.
#
#   bench/dns.sh                 # ~35 min: 3 runs x (main, main-warm, hot, miss) + workers
#   bench/dns.sh --quick         # 1 run of 5 s each, to try it
#   WORKLOADS="main" RUNS=6 bench/dns.sh
#   GEODNS_FLAGS="--rrl-rate 50 --rrl-exempt 127.0.0.1/32" bench/dns.sh   # extra serve flags
#
# Installs nothing. Needs gdnsd, gcc, python3 with maxminddb, and geodns's
# dependencies (`pip install -e .` also builds the recvmmsg extension; without
# it geodns falls back to plain asyncio UDP and this script says so).
# Writes only under ${GEODNS_CACHE:-$HOME/.cache/geodns}/bench/. Uses the full
# DB-IP city file when ../shared/geoip/build made it (or DB=path), else the
# bundled data/geoip-bundle.mmdb.
set -eu
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
WORKLOADS=${WORKLOADS:-"main hot miss"}
WORKERS_RUN=${WORKERS_RUN:-1}
MAIN_WARM=${MAIN_WARM:-12}   # warm-up seconds of the extra main-warm row; 0: no such row
GDNSD_PORT=${GDNSD_PORT:-5301}
GEODNS_PORT=${GEODNS_PORT:-5302}
GEODNS_FLAGS=${GEODNS_FLAGS:-}   # added to every geodns command line (e.g. rate limiting)
if [ "${1:-}" = "--quick" ]; then RUNS=1; DURATION=5; fi

command -v gdnsd >/dev/null || [ -x /usr/sbin/gdnsd ] || { echo "needs gdnsd: apt-get install gdnsd" >&2; exit 2; }
command -v gcc >/dev/null || { echo "needs gcc (for the load generator): apt-get install gcc" >&2; exit 2; }
command -v taskset >/dev/null || { echo "needs taskset (util-linux)" >&2; exit 2; }
python3 -c 'import maxminddb' 2>/dev/null || { echo "needs the maxminddb Python package" >&2; exit 2; }
python3 -c 'import geodns.cli' || { echo "geodns does not import: pip install -e . in $repo" >&2; exit 2; }
if ! python3 -c 'import geodns.dns._mmsg' 2>/dev/null; then
    echo "WARNING: geodns.dns._mmsg is not built (pip install -e .): geodns runs on plain asyncio UDP" >&2
fi
if [ "$(nproc)" -lt 2 ]; then echo "needs 2 CPUs (server on 0, load generator on 1)" >&2; exit 2; fi

use_geoip
# shellcheck disable=SC2086 # a list of names
ensure_workloads $WORKLOADS
ensure_loadgen
out=$(results_dir dns)

geodns() {  # geodns WORKERS PORT: the product as an operator runs it, every feature on
    echo "python3 -m geodns serve --zones $repo/zones/example.yaml --geoip $DB --state none" \
         "--listen 127.0.0.1:$2 --admin 127.0.0.1:$(($2 + 1000)) --workers $1 $GEODNS_FLAGS"
}
compare() {  # compare WORKLOAD JSON WARMUP SERVER...: bounded in time whatever happens
    w=$1; json=$2; warm=$3; shift 3
    timeout 3600 python3 "$kit/compare" --workload "$w" --workloads "$wl" --runs "$RUNS" \
        --duration "$DURATION" --warmup "$warm" --wait-quiet 60 --retries 2 \
        --json-out "$json" "$@" | tee "${json%.json}.txt"
}

echo "GeoIP: $DB; workloads in $wl; results in $out; geodns flags: ${GEODNS_FLAGS:-none}" >&2
both() {  # both WORKLOAD LABEL WARMUP: gdnsd then geodns, one worker
    compare "$1" "$out/$2.json" "$3" \
        --server gdnsd "$GDNSD_PORT" "$kit/gdnsd-run --foreground --port $GDNSD_PORT --db $DB" \
        --server geodns "$GEODNS_PORT" "$(geodns 1 "$GEODNS_PORT")"
}
for w in $WORKLOADS; do
    both "$w" "$w" "$WARMUP"
    if [ "$w" = main ] && [ "$MAIN_WARM" -gt 0 ]; then
        # gdnsd computes every network's answer before it answers at all; geodns
        # decides per location on first sight (25k locations in main's first
        # pass). A fresh server per turn and a 2 s warm-up measure that cold
        # start; this row lets each server see the workload once first.
        both main main-warm "$MAIN_WARM"
    fi
done
if [ "$WORKERS_RUN" = 1 ]; then
    # Both pinned to CPU 0 (CPU 1 runs the load generator): this shows what a
    # second process costs per query, not scaling; see RESULTS.md. Warm, since
    # each worker has its own cache and would pay the cold start twice.
    compare main "$out/workers.json" "$MAIN_WARM" \
        --server geodns-1w "$GEODNS_PORT" "$(geodns 1 "$GEODNS_PORT")" \
        --server geodns-2w "$((GEODNS_PORT + 1))" "$(geodns 2 "$((GEODNS_PORT + 1))")"
fi
python3 "$here/dns_report.py" "$out" | tee "$out/summary.md"
