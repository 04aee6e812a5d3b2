#!/usr/bin/env bash
# dnsperf (Debian package dnsperf) against `geodns serve`, with ECS from the
# real client subnets of the bench workloads. Prints queries/s and loss.
# Installs nothing. dnsperf saturates its own core near 150k q/s on this kind
# of machine, so it shows the familiar client's view; bench/dns.sh measures
# capacity beside gdnsd with a batched load generator.
#   bench/dnsperf.sh [WORKLOAD] [SECONDS]     (default: main 12)
set -euo pipefail
cd "$(dirname "$0")/.."
workload=${1:-main}
seconds=${2:-12}
cache=${GEODNS_CACHE:-$HOME/.cache/geodns}
wl=$cache/bench/workloads
command -v dnsperf >/dev/null || { echo "dnsperf is not installed (apt-get install dnsperf)" >&2; exit 2; }
[ -f "$wl/$workload.bin" ] || { echo "no workload $wl/$workload.bin: run bench/dns/workload first" >&2; exit 2; }
geoip=${GEODNS_GEOIP:-$cache/geoip/dbip-city-geoip2.mmdb}
[ -f "$geoip" ] || geoip=data/geoip-bundle.mmdb
port=5391
taskset -c 0 python3 -m geodns serve --listen 127.0.0.1:$port --admin none --workers 1 --state none \
  --geoip "$geoip" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do dig +short +time=1 +tries=1 @127.0.0.1 -p $port www.gslb.example.test >/dev/null 2>&1 && break; sleep 0.2; done
# One unmeasured pass first: geodns decides per location the first time it meets one
# (gdnsd does all of that at load), and a resolver fleet keeps a node warm.
taskset -c 1 dnsperf -s 127.0.0.1 -p $port -B -d "$wl/$workload.bin" -n 1 -c 4 -T 1 -q 256 >/dev/null 2>&1
out=$(taskset -c 1 dnsperf -s 127.0.0.1 -p $port -B -d "$wl/$workload.bin" -l "$seconds" -c 4 -T 1 -q 256 2>&1)
qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
lost=$(echo "$out" | awk '/Queries lost/ {print $3, $4}')
lat=$(echo "$out" | awk '/Average Latency/ {print $4}')
printf '%-10s %-14s %-14s %-12s\n' workload "queries/s" "lost" "avg latency s"
printf '%-10s %-14s %-14s %-12s\n' "$workload" "$qps" "$lost" "$lat"
