# Sourced by the side-by-side DNS benchmarks (dns.sh, dnssec.sh, memory.sh), after
# `set -eu`, as `. "$(dirname "$0")/lib.sh"`: where things are, and which GeoIP file and
# workloads a run uses. Sets
#   here repo kit cache    the bench folder, the repository, the shared kit (bench/dns),
#                          and ${GEODNS_CACHE:-$HOME/.cache/geodns}, where everything is written
#   PYTHONPATH             the repository first: `python3 -m geodns` runs this tree
#   loadgen                the batched load generator (built by `ensure_loadgen`)
# and, after `use_geoip`, DB (the full DB-IP city file when ../shared/geoip/build made it,
# or DB=path, else the bundled data/geoip-bundle.mmdb), tag (its short name) and wl (its
# workloads' folder).
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
kit=$here/dns
cache=${GEODNS_CACHE:-$HOME/.cache/geodns}
loadgen=$cache/bench/bin/loadgen
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

use_geoip() {  # sets DB, tag, wl (needs python3 with maxminddb)
    DB=${DB:-$(python3 -c "import sys; sys.path.insert(0, '$kit'); import benchlib; print(benchlib.ensure_geoip_db())")}
    case "$DB" in
        */dbip-city-geoip2.mmdb) tag=city ;;
        *) tag=$(basename "$DB" .mmdb) ;;
    esac
    wl=$cache/bench/workloads/$tag
}

ensure_workloads() {  # ensure_workloads NAME...: build those not built yet for $DB
    for w in "$@"; do
        [ -f "$wl/$w.bin" ] || python3 "$kit/workload" --db "$DB" --out "$wl" "$w"
    done
}

ensure_loadgen() {
    [ -x "$loadgen" ] || "$kit/build-loadgen" >/dev/null
}

results_dir() {  # results_dir KIND: makes and prints a new folder for this run's results
    dir=$cache/bench/results/$1-$(date +%Y%m%d-%H%M%S)
    mkdir -p "$dir"
    echo "$dir"
}
