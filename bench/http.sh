#!/usr/bin/env bash
# wrk against `geodns balance` and against HAProxy, in front of the same
# backends, in one run; prints requests/s and p99 of both and their ratio.
#
#   bench/http.sh                       # defaults below
#   DURATION=30s CONNS=100 WORKERS="1 2 4" ROUNDS=5 bench/http.sh
#
# Needs wrk and haproxy on PATH (Debian packages) and the geodns Python
# environment; installs nothing. Backends are one single-threaded HAProxy
# process answering a fixed 200 with `http-request return`, so that neither
# proxy is measured against a slow backend.
#
# For each N in WORKERS, `geodns balance --workers N` is compared with HAProxy
# `nbthread N`: the same number of cores each. ROUNDS rounds alternate the two
# (geodns first in odd rounds, HAProxy first in even ones) so that a noisy
# neighbour hurts both alike; the table gives medians over the rounds.
#
# On a shared machine requests/s depend on how much CPU the others left, so
# each run also records the CPU time the balancer's processes used while wrk
# measured (/proc/PID/stat, the process and its children): requests per
# CPU-second is the per-core figure, comparable between the two balancers
# even when neither had a whole core.
#
# LOAD=FRACTION (default 0.5; 0 to skip) then runs each balancer again at a
# paced rate, FRACTION of the requests/s geodns reached in that round (the
# previous round's when HAProxy goes first), the same rate for both: p99 at
# half load rather than at saturation. wrk paces with a Lua delay() per
# connection (CONNS x 1000 / rate ms between a response and the next request).
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-1}
BACKENDS=${BACKENDS:-3}
NCPU=$(getconf _NPROCESSORS_ONLN)
WORKERS=${WORKERS:-"1 $NCPU"}
ROUNDS=${ROUNDS:-3}
LOAD=${LOAD:-0.5}
NET=${NET:-127.0.4}
PYTHON=${PYTHON:-python3}

for tool in wrk haproxy "$PYTHON"; do
    command -v "$tool" >/dev/null || { echo "bench/http.sh: $tool not found" >&2; exit 1; }
done

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
stop() {  # pid: SIGTERM, then wait for it (geodns drains its workers first)
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
    "$PYTHON" -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

wait_port() {  # host port
    for _ in $(seq 100); do
        if "$PYTHON" -c 'import socket,sys; socket.create_connection((sys.argv[1],int(sys.argv[2])),0.2)' "$1" "$2" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench/http.sh: nothing listening on $1:$2" >&2
    exit 1
}

# ---- backends
backend_lines=""
geodns_backends=""
{
    echo "global"
    echo "  nbthread 1"
    echo "defaults"
    echo "  mode http"
    echo "  timeout connect 3s"
    echo "  timeout client 60s"
    echo "  timeout server 60s"
} > "$tmp/backends.cfg"
for i in $(seq 0 $((BACKENDS - 1))); do
    host="$NET.$((210 + i))"
    port=$(free_port "$host")
    {
        echo "frontend b$i"
        echo "  bind $host:$port"
        echo "  http-request return status 200 content-type text/plain string \"hello from b$i\""
    } >> "$tmp/backends.cfg"
    backend_lines+="  server b$i $host:$port"$'\n'
    geodns_backends+="      - $host:$port"$'\n'
    last_backend="$host $port"
done
haproxy -q -f "$tmp/backends.cfg" &
pids+=($!)

# ---- the balancers under test, N cores each
start_haproxy() {  # nbthread
    ha_host="$NET.201"
    ha_port=$(free_port "$ha_host")
    cat > "$tmp/haproxy.cfg" <<CFG
global
  nbthread $1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 3s
  timeout client 60s
  timeout server 30s
  timeout http-keep-alive 60s
frontend fe
  bind $ha_host:$ha_port
  default_backend be
backend be
  balance roundrobin
  http-reuse always
  option forwardfor
$backend_lines
CFG
    haproxy -q -f "$tmp/haproxy.cfg" &
    ha_pid=$!
    pids+=("$ha_pid")
    wait_port "$ha_host" "$ha_port"
}

start_geodns() {  # workers
    gd_host="$NET.202"
    gd_port=$(free_port "$gd_host")
    cat > "$tmp/geodns.yaml" <<CFG
listen: $gd_host:$gd_port
timeouts: {connect: 3, read: 30, idle: 60}
pools:
  web:
    algorithm: round_robin
    max_conns: 10000
    backends:
$geodns_backends
CFG
    (cd "$root" && exec "$PYTHON" -m geodns.balance --config "$tmp/geodns.yaml" --workers "$1" --log-level warning) &
    gd_pid=$!
    pids+=("$gd_pid")
    wait_port "$gd_host" "$gd_port"
}

# shellcheck disable=SC2086
wait_port $last_backend

cpu_ticks() {  # pid: CPU time (utime + stime, in clock ticks) of it and its child processes
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

run() {  # out url pid: wrk, and the CPU the balancer used while wrk measured
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$2" >/dev/null
    local before after
    before=$(cpu_ticks "$3")
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$2" > "$1"
    after=$(cpu_ticks "$3")
    echo "cpu_seconds $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" 'BEGIN {print t / hz}')" >> "$1"
}
paced() {  # out url: wrk at $rate requests/s over all connections (LOAD > 0 only)
    awk -v load="$LOAD" 'BEGIN {exit !(load > 0)}' || return 0
    local delay
    delay=$(awk -v c="$CONNS" -v r="$rate" 'BEGIN {d = int(c * 1000 / r); print (d < 1 ? 1 : d)}')
    printf 'function delay()\n  return %d\nend\n' "$delay" > "$tmp/pace.lua"
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$tmp/pace.lua" "$2" > "$1"
    echo "offered_rate $rate" >> "$1"
}
rate=1000
bench_geodns() {  # workers round
    start_geodns "$1"
    run "$tmp/w$1-geodns-$2.txt" "http://$gd_host:$gd_port/" "$gd_pid"
    if ((${2} % 2)); then  # geodns went first: this round's figure sets the paced rate
        rate=$(awk -v load="$LOAD" '/Requests\/sec/ {r = int($2 * load); print (r < 1 ? 1 : r)}' "$tmp/w$1-geodns-$2.txt")
    fi
    paced "$tmp/w$1-geodns-$2-load.txt" "http://$gd_host:$gd_port/"
    stop "$gd_pid"
}
bench_haproxy() {  # nbthread round
    start_haproxy "$1"
    run "$tmp/w$1-haproxy-$2.txt" "http://$ha_host:$ha_port/" "$ha_pid"
    paced "$tmp/w$1-haproxy-$2-load.txt" "http://$ha_host:$ha_port/"
    stop "$ha_pid"
}

for n in $WORKERS; do
    for r in $(seq "$ROUNDS"); do
        if ((r % 2)); then bench_geodns "$n" "$r"; bench_haproxy "$n" "$r"
        else bench_haproxy "$n" "$r"; bench_geodns "$n" "$r"; fi
    done
done

echo "wrk -t$THREADS -c$CONNS -d$DURATION (warm-up $WARMUP), $BACKENDS backends, $NCPU CPUs, median of $ROUNDS alternating rounds, paced at $LOAD of geodns's rate"
echo
# shellcheck disable=SC2086
"$PYTHON" "$here/http_report.py" "$tmp" --workers $WORKERS
