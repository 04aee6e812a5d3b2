#!/bin/sh
# geodns signing online vs not, every query with DO set: the example zone
# unsigned, then the same zone with `dnssec:` (algorithm 13 and 15), on the
# main and miss workloads with their DO bit set (bench/dnssec_workload.py).
# Same method as bench/dns.sh (bench/dns/compare: fresh server per turn,
# server on CPU 0, load generator on CPU 1, answers checked in round 1), then
# a micro-benchmark of one core's signatures per second.
#
#   bench/dnssec.sh                     # 3 runs x (main-do, miss-do) x (13, 15)
#   WORKLOADS="main" RUNS=1 DURATION=5 bench/dnssec.sh
#   WORKLOADS="main" ALGS= bench/dnssec.sh     # only PowerDNS beside signed geodns
#
# Writes only under ${GEODNS_CACHE:-$HOME/.cache/geodns}/bench/.
set -eu
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
WORKLOADS=${WORKLOADS:-"main miss"}
ALGS=${ALGS-"13 15"}
PDNS=${PDNS:-1}   # also PowerDNS (pdns-server, pdns-backend-geoip) beside signed geodns
PORT=${PORT:-5311}
use_geoip
ensure_loadgen
out=$(results_dir dnssec)

signed=$cache/bench/dnssec
for alg in 13 15; do
    zones=$signed/zones-$alg
    if [ ! -d "$zones" ]; then
        mkdir -p "$zones"
        sed "s#../data/latency.yaml#$repo/data/latency.yaml#" "$repo/zones/example.yaml" > "$zones/example.yaml"
        printf '\ndnssec:\n  keys: keys\n' >> "$zones/example.yaml"
        python3 -m geodns keys generate gslb.example.test --dir "$zones/keys" --algorithm "$alg" >/dev/null
    fi
    python3 -m geodns check "$zones" >/dev/null
done

serve() {  # serve ZONES PORT
    echo "python3 -m geodns serve --zones $1 --geoip $DB --state none --listen 127.0.0.1:$2 --admin 127.0.0.1:$(($2 + 1000)) --workers 1"
}
for w in $WORKLOADS; do
    ensure_workloads "$w"
    [ -f "$wl/$w-do.bin" ] || python3 "$here/dnssec_workload.py" "$wl" "$w"
    for alg in $ALGS; do  # compare takes two servers: unsigned beside each algorithm
        timeout 3600 python3 "$kit/compare" --workload "$w-do" --workloads "$wl" --runs "$RUNS" \
            --duration "$DURATION" --warmup "$WARMUP" --wait-quiet 60 --retries 2 --json-out "$out/$w-do-$alg.json" \
            --server unsigned "$PORT" "$(serve "$repo/zones/example.yaml" "$PORT")" \
            --server "signed-$alg" "$((PORT + 1))" "$(serve "$signed/zones-$alg" "$((PORT + 1))")" | tee "$out/$w-do-$alg.txt"
    done
done
if [ "$PDNS" = 1 ] && command -v pdns_server >/dev/null; then
    # PowerDNS Authoritative with its GeoIP backend, signing live (pdnsutil secure-zone:
    # one algorithm 13 CSK), one receiver and one distributor thread. Its steering is by
    # continent (%cn), not distance, so answers are not checked (--no-verify).
    pd=$cache/bench/pdns
    mkdir -p "$pd/keys"
    sed "s#@DB@#$DB#; s#@DIR@#$pd#; s#@PORT@#$((PORT + 2))#" "$here/pdns/pdns.conf" > "$pd/pdns.conf"
    cp "$here/pdns/geo.yaml" "$pd/geo.yaml"
    ls "$pd/keys" | grep -q . || pdnsutil --config-dir="$pd" secure-zone gslb.example.test >/dev/null
    for w in $WORKLOADS; do
        timeout 3600 python3 "$kit/compare" --workload "$w-do" --workloads "$wl" --runs "$RUNS" --no-verify \
            --duration "$DURATION" --warmup "$WARMUP" --wait-quiet 60 --retries 2 --json-out "$out/$w-do-pdns.json" \
            --server pdns-geoip "$((PORT + 2))" "pdns_server --config-dir=$pd" \
            --server signed-13 "$((PORT + 1))" "$(serve "$signed/zones-13" "$((PORT + 1))")" | tee "$out/$w-do-pdns.txt"
    done
fi
taskset -c 0 python3 "$here/dnssec_sign_rate.py" | tee "$out/sign-rate.txt"
echo "results in $out" >&2
