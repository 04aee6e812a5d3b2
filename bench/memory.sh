#!/bin/sh
# RSS per worker of `geodns serve --workers 2` on the full DB-IP city data:
# started, after 3 passes of the main workload, then after 40 s and 80 s of
# the miss storm on top. Prints a markdown table from /proc/PID/smaps_rollup
# of each worker (RSS, its anonymous and file-backed parts, PSS).
#
#   bench/memory.sh            # ~2.5 min
#   STORM=20 bench/memory.sh   # shorter storm steps
#
# Installs nothing; needs what bench/dns.sh needs (run that once first: it
# builds the load generator and writes the workloads). Server pinned to CPU 0,
# load generator to CPU 1, both on 127.0.0.1; the server is stopped by its pid.
set -eu
. "$(dirname "$0")/lib.sh"
PORT=${PORT:-5312}
STORM=${STORM:-40}
WORKERS=${WORKERS:-2}
use_geoip
for f in "$wl/main.bin" "$wl/miss.bin" "$loadgen"; do
    [ -e "$f" ] || { echo "missing $f: run bench/dns.sh once first" >&2; exit 2; }
done

taskset -c 0 python3 -m geodns serve --zones "$repo/zones/example.yaml" --geoip "$DB" --state none \
    --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$((PORT + 1000))" --workers "$WORKERS" \
    >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT INT TERM
i=0
until dig +short +time=1 +tries=1 -p "$PORT" @127.0.0.1 www.gslb.example.test >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 60 ] || { echo "geodns did not answer" >&2; exit 1; }
    sleep 0.5
done
sleep 1

row() {  # row LABEL: one table row per worker
    for pid in $(pgrep -P "$server"); do
        awk -v label="$1" -v pid="$pid" '
            /^Rss:/ {rss=$2} /^Pss:/ {pss=$2} /^Anonymous:/ {anon=$2} /^Pss_File:/ {pf=$2}
            END {printf "| %s | %d | %.0f MB | %.0f MB | %.0f MB | %.0f MB |\n", label, pid, rss/1024, anon/1024, (rss-anon)/1024, pss/1024}
        ' "/proc/$pid/smaps_rollup"
    done
}
load() {  # load WORKLOAD ARGS...
    taskset -c 1 "$loadgen" -f "$wl/$1.bin" -p "$PORT" -c 256 "$@" >/dev/null 2>&1 || true
}

echo "| moment | worker pid | RSS | anon | file (mmap) | PSS |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
row "started"
load main -n 300000 -d 60
row "after 3 passes of main (300k queries)"
load miss -d "$STORM"
row "after ${STORM} s of the miss storm on top"
load miss -d "$STORM"
row "after another ${STORM} s of it"
