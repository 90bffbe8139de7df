#!/usr/bin/env bash
# sluice against its peers, in ONE run on this machine: direct (no proxy), sluice (default data
# path and forced through the loopback hop), sluice --workers N, squid (ssl-bump, 1 and N workers)
# and mitmproxy (mitmdump), same harness, ROUNDS rounds, one table of medians at the end.
#
# Harness: the client (wrk, or a small Deno client) runs in a network namespace this script
# creates, as a dedicated uid; nft in that namespace (type nat hook output) REDIRECTs that
# uid's TCP to 192.0.2.10:443 to the system under test ("direct" redirects to nginx itself).
# nginx is the TLS upstream, with a test CA made here by openssl; every proxy mints its leaves
# from that CA and trusts it upstream. 192.0.2.10 (documentation range) lives on the
# namespace's loopback, so squid and mitmproxy, which connect to the original destination,
# reach nginx; their own connections are not redirected (another uid). Nothing leaves the
# namespace: it has no interface but lo. Everything (processes, namespace and its nft table,
# /etc/netns/<ns>, the temp dir) is removed on every exit path, Ctrl-C included.
# sluice resolves the names itself through the namespace's hosts file.
#
#   sudo bench/peers.sh                                       # the full run (ROUNDS=5)
#   sudo ROUNDS=2 SECS=3 SYSTEMS="sluice squid" bench/peers.sh   # a quick check
#
# Rounds: every round runs every system once (fresh process, sanity check, 2 s warm-up, the
# scenarios), the systems' order rotating from round to round. The table gives per system and
# scenario the MEDIAN over the rounds; "x squid" is the system's req/s over squid's IN THE SAME
# ROUND, then the median of those per-round ratios (drift between rounds does not bias it);
# "p99 added" is the system's p99 minus direct's p99 at the fixed rate, in the same round, then
# the median. The --workers rows are compared with squid running the same number of workers.
# The raw per-round rows go to $OUT.raw.tsv, the table (made by bench/peers/summarize.ts from
# them; it can be re-run on a kept raw file) to $OUT.md (see OUT).
#
# Environment (defaults in brackets):
#   ROUNDS [5]     rounds; the issue asks for at least 5 (fewer is fine for a quick check)
#   SECS [10]      seconds per wrk cell and of the fixed-rate latency cell
#   SYSTEMS ["direct sluice sluice-hop squid mitmproxy sluice-workers squid-workers"]
#                  direct: nginx itself through the same redirect; floor, floor-fetch (only when
#                  named): the floor of sluice's design, bench/lib/floor_proxy.ts, with sluice's
#                  upstream pool or with Deno's fetch upstream; sluice: its default data path
#                  (and --workers $BASE_WORKERS); sluice-hop: `serve --data-path hop` (row
#                  "sluice (hop)", --workers $BASE_WORKERS too); sluice-workers:
#                  `serve --workers $WORKERS`; squid-workers: squid.conf `workers $WORKERS`
#                  (squid --foreground, SMP). A sluice without --data-path / --workers gets an
#                  "n/a" row instead. squid and mitmproxy are apt-get installed if missing.
#   WORKERS [2]    N of the --workers rows (sluice --workers N, squid workers N)
#   BASE_WORKERS [1]  --workers given to the "sluice" and "sluice (hop)" rows when sluice has the
#                  flag, so that they compare like for like with one squid process; empty: sluice's
#                  own default (the number of cores, at most 4)
#   CELLS ["keep-alive new-conn 1MB sni latency h2"]  the scenarios (idle memory is always measured,
#                  once per system, in the last round; CELLS=none: idle memory only)
#   RATE [1000]    requests/s of the fixed-rate latency scenario. If "latency" is in CELLS and
#                  "direct" is not in SYSTEMS, direct's latency cell still runs in every round
#                  (the baseline of "p99 added")
#   NAMES [1000]   distinct SNI names of the sni scenario
#   IDLE [1000]    idle intercepted connections of the memory measurement
#   IDLE_SETTLE [10]  seconds the idle connections are held before the RSS is read: idle, not
#                  just opened (sluice gives freed memory back once it has been quiet for 2 s,
#                  lib/ops/memory.ts; it was 2 s before 2026-12-02)
#   OUT [/tmp/sluice-peers-<UTC time>]  prefix of the files kept after the run: OUT.raw.tsv (every
#                  round's numbers), OUT.memory.tsv, OUT.md (the table as printed)
#   SOAK [0]       seconds of keep-alive soak on sluice after its last round, RSS every 10 s
#   PROFILE [0]    1: one more sluice run under `deno run --cpu-prof`, summarized
#   PROFILE_SCENARIO [keep-alive]  or new-conn, h2, 1MB: what the profiled run does
#   PROFILE_OUT [] copy the .cpuprofile there
#   KEEP [0]       1: keep the temp dir (every log) for debugging
#   SLUICE_DENO_FLAGS [--v8-flags=--max-semi-space-size=2]  `deno run` flags for sluice
#   SLUICE_ENV []  extra VAR=value for sluice
#   DENO [deno]    the deno that runs sluice and the clients
#
# Scenarios (wrk -t2 -c16, HTTP/1.1):
#   keep-alive   GET /ok (2-byte body) on persistent connections
#   new-conn     the same with "Connection: close": one full TLS handshake per request (wrk does
#                not resume sessions); wrk's latency starts after the handshake, so read req/s
#   1MB          GET /1m (1 MiB random body): req/s = MiB/s
#   sni-1000     bench/lib/sni_client.ts: n0..n999.bench.test once each, a fresh connection and
#                client per name, 16 in flight: the first pass, so every name is a new leaf
#   latency      bench/lib/rate_client.ts: GET /ok at a fixed RATE over 16 keep-alive connections,
#                latency from each request's scheduled time (no coordinated omission): the
#                system's own added latency, not its queue at full load. (Not h2load --rps:
#                it paces per client and times from the send, so a stall hides its backlog.)
#   h2           h2load -c16 -m10: GET /ok over HTTP/2, 10 streams in flight per connection, end
#                to end (sluice serves h2 to the client and speaks h2 to nginx). squid 5.7 does
#                not offer h2 to clients, so its row says why it has no figure.
# CPU µs/req: user+system clock ticks (/proc/PID/stat utime+stime) of the whole process tree of
# the system under test (all processes, all threads) over the measured window, divided by the
# requests completed in it.
# Memory: RSS (VmRSS, whole process tree) at start and after the scenarios of the last round;
# then the system is restarted and measured fresh, and with IDLE idle intercepted connections
# open (bench/lib/idle_client.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/peers.sh must run as root (it creates a network namespace, nft rules and runs squid); try: sudo $0" >&2
  exit 1
fi

SECS=${SECS:-10}
SOAK=${SOAK:-0}
PROFILE=${PROFILE:-0}
PROFILE_OUT=${PROFILE_OUT:-}
PROFILE_SCENARIO=${PROFILE_SCENARIO:-keep-alive}
SYSTEMS=${SYSTEMS:-direct sluice sluice-hop squid mitmproxy sluice-workers squid-workers}
ROUNDS=${ROUNDS:-5}
WORKERS=${WORKERS:-2}
BASE_WORKERS=${BASE_WORKERS-1}
OUT=${OUT:-/tmp/sluice-peers-$(date -u +%Y%m%dT%H%M%SZ)}
NAMES=${NAMES:-1000}
IDLE=${IDLE:-1000}
KEEP=${KEEP:-0}
CELLS=${CELLS:-keep-alive new-conn 1MB sni latency h2}
RATE=${RATE:-1000}
# The V8 flag compile.sh bakes into the binary, so the figures are the shipped binary's.
SLUICE_DENO_FLAGS=${SLUICE_DENO_FLAGS---v8-flags=--max-semi-space-size=2}
SLUICE_ENV=${SLUICE_ENV-}
DENO=${DENO:-deno}
deno_path=$(command -v "$DENO") || { echo "bench/peers.sh needs deno (DENO=$DENO is not on PATH; Deno 2.9.6)" >&2; exit 1; }
DENO=$deno_path
for knob in ROUNDS SECS WORKERS RATE NAMES IDLE SOAK; do
  [[ ${!knob} =~ ^[0-9]+$ ]] || { echo "bench/peers.sh: $knob must be a whole number, got '${!knob}'" >&2; exit 1; }
done
[[ $BASE_WORKERS =~ ^[0-9]*$ ]] || { echo "bench/peers.sh: BASE_WORKERS must be a whole number or empty, got '$BASE_WORKERS'" >&2; exit 1; }
[ "$ROUNDS" -ge 1 ] && [ "$WORKERS" -ge 1 ] && [ "$SECS" -ge 1 ] ||
  { echo "bench/peers.sh: ROUNDS, WORKERS and SECS must be at least 1" >&2; exit 1; }
for sys in $SYSTEMS; do
  case $sys in
    direct | floor | floor-fetch | sluice | sluice-hop | sluice-workers | squid | squid-workers | mitmproxy) ;;
    *) echo "bench/peers.sh: unknown system '$sys' in SYSTEMS (direct floor floor-fetch sluice sluice-hop sluice-workers squid squid-workers mitmproxy)" >&2; exit 1 ;;
  esac
done
mkdir -p "$(dirname "$OUT")"
: >"$OUT.raw.tsv" || { echo "bench/peers.sh: cannot write $OUT.raw.tsv (OUT=$OUT)" >&2; exit 1; }
THREADS=2
CONNS=16
WARM=2
CLIENT_UID=64123 # the client's uid: the only traffic the REDIRECT rule matches
FRONT=192.0.2.10
declare -A PORT=([direct]=443 [floor]=15443 [floor-fetch]=15443 [sluice]=15443 [sluice-hop]=15443 [sluice-workers]=15443 [squid]=3129 [squid-workers]=3129 [mitmproxy]=8080)

ns="sluice-peers-$$"
dir=$(mktemp -d /tmp/sluice-peers.XXXXXX)
chmod 755 "$dir"
pids=()
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log() { printf '[peers %s] %s\n' "$(date +%T)" "$*" >&2; }

stop_pid() { # pid [seconds]: TERM, wait up to seconds (10), then KILL
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq $((${2:-10} * 10))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do stop_pid "$p"; done
  # Anything still inside the namespace was started by this script (helpers of the above).
  if ip netns list 2>/dev/null | grep -qw "$ns"; then
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  fi
  rm -rf "/etc/netns/$ns"
  if [ "$KEEP" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in wrk nft ip ss openssl nginx setpriv curl awk getconf timeout; do
  command -v "$tool" >/dev/null || { echo "bench/peers.sh needs $tool (apt-get install wrk nftables iproute2 openssl nginx-light util-linux curl mawk coreutils)" >&2; exit 1; }
done

# ---------------------------------------------------------------- peers: install what is missing
declare -A AVAILABLE=([direct]=1 [floor]=1 [floor-fetch]=1 [sluice]=1)
if [[ " $CELLS " == *" h2 "* ]] && ! command -v h2load >/dev/null; then
  apt-get update -q >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nghttp2-client >/dev/null 2>&1 || true
  command -v h2load >/dev/null || { echo "the h2 scenario needs h2load (apt-get install nghttp2-client)" >&2; exit 1; }
fi
declare -A UNAVAILABLE=() # system -> why its row is n/a
apt_updated=0
ensure_pkg() { # command package
  command -v "$1" >/dev/null && return 0
  if [ "$apt_updated" = 0 ]; then apt-get update -q >"$dir/apt.log" 2>&1 || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >>"$dir/apt.log" 2>&1 || true
  command -v "$1" >/dev/null
}
# sluice's --workers and --data-path are newer than this script: without them, the rows say so.
sluice_help=$("$DENO" run -A "$repo/main.ts" serve --help 2>&1) ||
  { echo "$sluice_help" >&2; echo "bench/peers.sh: \`deno run -A main.ts serve --help\` failed" >&2; exit 1; }
# The single-process rows pin --workers (sluice's default is one thread per core), when it exists.
base_workers=""
if [ -n "$BASE_WORKERS" ] && grep -q -- "--workers" <<<"$sluice_help"; then base_workers="--workers $BASE_WORKERS"; fi
for sys in $SYSTEMS; do
  case $sys in
    squid | squid-workers)
      if ensure_pkg squid squid-openssl; then AVAILABLE[$sys]=1; else AVAILABLE[$sys]=0 UNAVAILABLE[$sys]="n/a (squid-openssl could not be installed)"; fi ;;
    mitmproxy)
      if ensure_pkg mitmdump mitmproxy; then AVAILABLE[$sys]=1; else AVAILABLE[$sys]=0 UNAVAILABLE[$sys]="n/a (mitmproxy could not be installed)"; fi ;;
    sluice-hop)
      if grep -q -- "--data-path" <<<"$sluice_help"; then AVAILABLE[$sys]=1; else AVAILABLE[$sys]=0 UNAVAILABLE[$sys]="n/a (sluice has no --data-path)"; fi ;;
    sluice-workers)
      if grep -q -- "--workers" <<<"$sluice_help"; then AVAILABLE[$sys]=1; else AVAILABLE[$sys]=0 UNAVAILABLE[$sys]="n/a (sluice has no --workers)"; fi ;;
  esac
done

# ---------------------------------------------------------------- test CA, origin, files
log "work dir $dir, namespace $ns"
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 2 -subj "/CN=sluice bench test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" -out "$dir/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/origin.key" 2>/dev/null
openssl req -new -key "$dir/origin.key" -subj "/CN=bench-origin" -out "$dir/origin.csr" 2>/dev/null
printf 'subjectAltName=DNS:*.bench.test,DNS:bench.test,IP:127.0.0.1,IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$FRONT" >"$dir/origin.ext"
openssl x509 -req -in "$dir/origin.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 2 -sha256 -extfile "$dir/origin.ext" -out "$dir/origin.pem" 2>/dev/null
# A throwaway CA that lives for this run only; squid reads it as root, then runs as proxy.
chmod 644 "$dir/ca.key" "$dir/ca.pem"
origin_fp=$(openssl x509 -in "$dir/origin.pem" -noout -fingerprint -sha256)
mkdir -p "$dir/www" "$dir/client" "$dir/client/denodir"
# The client runs as another uid, which may not be able to read a deno under /root.
cp "$(readlink -f "$DENO")" "$dir/client/deno"
head -c 1048576 /dev/urandom >"$dir/www/1m"
cp bench/lib/sni_client.ts bench/lib/idle_client.ts bench/lib/rate_client.ts bench/lib/percentile.ts "$dir/client/"
chown -R "$CLIENT_UID:$CLIENT_UID" "$dir/client"
sed "s#@DIR@#$dir#g" bench/lib/nginx.conf >"$dir/nginx.conf"

# ---------------------------------------------------------------- namespace, names, redirect
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add "$FRONT/32" dev lo
ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="20000 65000"
mkdir -p "/etc/netns/$ns"
{
  echo "127.0.0.1 localhost"
  echo "$FRONT ka.bench.test idle.bench.test"
  for i in $(seq 0 $((NAMES - 1))); do echo "$FRONT n$i.bench.test"; done
} >"/etc/netns/$ns/hosts"
echo "nameserver 127.0.0.1" >"/etc/netns/$ns/resolv.conf" # no DNS at all inside the namespace

redirect_to() { # port
  ip netns exec "$ns" nft -f - <<NFT
table ip sluice_peers
delete table ip sluice_peers
table ip sluice_peers {
  chain out {
    type nat hook output priority -100;
    meta skuid $CLIENT_UID ip daddr $FRONT tcp dport 443 redirect to :$1
  }
}
NFT
}

inns() { ip netns exec "$ns" "$@"; }
as_client() { # run a command in the namespace as the client uid
  ip netns exec "$ns" setpriv --reuid="$CLIENT_UID" --regid="$CLIENT_UID" --clear-groups \
    env HOME="$dir/client" DENO_DIR="$dir/client/denodir" DENO_NO_UPDATE_CHECK=1 "$@"
}
# For `... &` only: exec, so that $! is the program itself (ip netns exec, setpriv and env all
# exec too) and stopping it by pid stops the program, not a subshell around it.
bg_inns() { exec ip netns exec "$ns" "$@"; }
bg_client() { exec ip netns exec "$ns" setpriv --reuid="$CLIENT_UID" --regid="$CLIENT_UID" --clear-groups \
  env HOME="$dir/client" DENO_DIR="$dir/client/denodir" DENO_NO_UPDATE_CHECK=1 "$@"; }
listening() { inns ss -Hltn "sport = :$1" | grep -q .; }
wait_listen() { # port seconds pid
  local i
  for i in $(seq $(($2 * 10))); do
    listening "$1" && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

bg_inns nginx -c "$dir/nginx.conf" >"$dir/nginx.log" 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
wait_listen 443 10 "$nginx_pid" || { cat "$dir/nginx.log" "$dir/nginx-error.log" >&2; echo "nginx did not start" >&2; exit 1; }

# ---------------------------------------------------------------- systems under test
sys_pid=""
start_sluice() { # "serve flags of the variant" [extra deno flags...]
  local serve_extra=$1
  shift
  # Names resolve through the namespace's hosts file (getaddrinfo, then sluice's 30 s cache),
  # as they would in production; FRONT is a documentation address, which the private guard
  # lets through, and sluice's own connections to it are not redirected (another uid).
  cat >"$dir/sluice.yaml" <<YAML
version: 1
network:
  allow: ["*.bench.test"]
tls:
  ca: { cert: $dir/ca.pem, key: $dir/ca.key }
  upstream: { ca: [$dir/ca.pem] }
audit: { log: $dir/sluice-audit.jsonl }
YAML
  # Every benchmark client shares one address: sluice's per-client cap (256 by default, a flood
  # guard) would refuse the idle-connection cell's 1,000 connections, so it is raised here. Older
  # sluice builds without --limit get nothing.
  SLUICE_LIMITS=""
  if grep -q -- "--limit" <<<"$sluice_help"; then
    SLUICE_LIMITS="--limit per-client=4096"
  fi
  log "sluice serve ${serve_extra:-(default data path)}"
  # shellcheck disable=SC2086 # SLUICE_DENO_FLAGS, SLUICE_LIMITS and serve_extra are lists of flags
  bg_inns env $SLUICE_ENV "$DENO" run -A $SLUICE_DENO_FLAGS "$@" "$repo/main.ts" serve --policy "$dir/sluice.yaml" --proxy 127.0.0.1:0 \
    --transparent-https "127.0.0.1:${PORT[sluice]}" --admin 127.0.0.1:19090 --state "$dir/sluice-state" --drain-timeout 1 \
    --log-format json $SLUICE_LIMITS $serve_extra >>"$dir/sluice.log" 2>&1 &
  sys_pid=$!
  pids+=("$sys_pid")
  wait_listen "${PORT[sluice]}" 60 "$sys_pid"
}
start_squid() { # [workers]: without, one process (squid -N); with N, SMP: a master, N workers
  mkdir -p "$dir/squid"
  rm -rf "$dir/squid/ssldb"
  sed "s#@DIR@#$dir#g; s#@PORT@#${PORT[squid]}#g; s#@PORT2@#3130#g" bench/lib/squid.conf >"$dir/squid.conf"
  /usr/lib/squid/security_file_certgen -c -s "$dir/squid/ssldb" -M 64MB >/dev/null 2>&1
  chown -R proxy:proxy "$dir/squid"
  if [ -n "${1:-}" ]; then
    # SMP mode needs the master in the foreground, not -N (no-daemon mode is never SMP).
    echo "workers $1" >>"$dir/squid.conf"
    log "squid workers $1"
    bg_inns squid --foreground -f "$dir/squid.conf" >>"$dir/squid.log" 2>&1 &
  else
    bg_inns squid -N -f "$dir/squid.conf" >>"$dir/squid.log" 2>&1 &
  fi
  sys_pid=$!
  pids+=("$sys_pid")
  # Wait for the listener without ever connecting to it (squid's intercept port must not be
  # probed directly: see docs/performance.md).
  wait_listen "${PORT[squid]}" 30 "$sys_pid"
}
start_floor() { # pool | fetch: bench/lib/floor_proxy.ts, the design's floor without sluice
  log "floor proxy, upstream client: $1"
  # shellcheck disable=SC2086 # SLUICE_DENO_FLAGS is a list of flags
  bg_inns env FLOOR_UPSTREAM="$1" "$DENO" run -A $SLUICE_DENO_FLAGS "$repo/bench/lib/floor_proxy.ts" \
    --listen "127.0.0.1:${PORT[floor]}" --upstream "$FRONT:443" --ca-cert "$dir/ca.pem" --ca-key "$dir/ca.key" \
    >>"$dir/floor.log" 2>&1 &
  sys_pid=$!
  pids+=("$sys_pid")
  wait_listen "${PORT[floor]}" 60 "$sys_pid"
}
start_mitmproxy() {
  mkdir -p "$dir/mitm"
  cat "$dir/ca.key" "$dir/ca.pem" >"$dir/mitm/mitmproxy-ca.pem"
  bg_inns mitmdump --mode transparent --listen-host 127.0.0.1 --listen-port "${PORT[mitmproxy]}" \
    --set confdir="$dir/mitm" --set ssl_verify_upstream_trusted_ca="$dir/ca.pem" >"$dir/mitm.log" 2>&1 &
  sys_pid=$!
  pids+=("$sys_pid")
  wait_listen "${PORT[mitmproxy]}" 60 "$sys_pid"
}
start_system() { # name
  case $1 in
    direct) sys_pid=$nginx_pid ;;
    floor) start_floor pool ;;
    floor-fetch) start_floor fetch ;;
    sluice) start_sluice "$base_workers" ;;
    sluice-hop) start_sluice "--data-path hop${base_workers:+ $base_workers}" ;;
    sluice-workers) start_sluice "--workers $WORKERS" ;;
    squid) start_squid ;;
    squid-workers) start_squid "$WORKERS" ;;
    mitmproxy) start_mitmproxy ;;
  esac
}
stop_system() { # name [seconds to exit]
  [ "$1" = direct ] && return 0
  local tree keep=() p
  # The whole tree (squid's kids and helpers, sluice's workers), so nothing outlives its row and
  # holds the port or the cores for the next system.
  tree=$(tree_pids "$sys_pid")
  stop_pid "$sys_pid" "${2:-10}"
  for p in $tree; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do [ "$p" != "$sys_pid" ] && keep+=("$p"); done
  pids=("${keep[@]}")
}
system_log() {
  case $1 in
    sluice*) tail -n 20 "$dir/sluice.log" ;;
    floor*) tail -n 20 "$dir/floor.log" ;;
    squid*) tail -n 20 "$dir/squid.log" "$dir/squid/cache.log" 2>/dev/null ;;
    mitmproxy) tail -n 20 "$dir/mitm.log" ;;
    *) tail -n 20 "$dir/nginx-error.log" ;;
  esac
}

tree_pids() { # pid: it and its descendants
  local c
  echo "$1"
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}
rss_mb() { # pid: summed VmRSS of the process tree, MiB
  local kb=0 p v
  for p in $(tree_pids "$1"); do
    v=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    kb=$((kb + ${v:-0}))
  done
  awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}

cpu_ticks() { # pid: user+system clock ticks used so far by the process tree (all threads)
  local t=0 p v
  for p in $(tree_pids "$1"); do
    v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)
us_per_req() { # ticks requests -> CPU microseconds per request
  awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "-" }'
}

# ---------------------------------------------------------------- measurement
# One row per round, system and scenario (the raw numbers, kept after the run):
raw="$OUT.raw.tsv"
memory="$OUT.memory.tsv" # system start after fresh idle idle_note (last round)
printf 'round\tsystem\tscenario\trps\tp50_ms\tp99_ms\tmib_s\terrors\tcpu_us_req\trss_mib\tnote\n' >"$raw"
: >"$memory"
rows="$raw" # where row() writes (the profiled run writes elsewhere)
round=0
row() { # system scenario rps p50 p99 MiB/s errors cpu_us_req rss note
  local note
  note=$(printf '%s' "${10:-}" | tr '\t\n|' '  /') # one TSV field, one markdown cell
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "${@:1:9}" "$note" >>"$rows"
  log "round $round: $(tail -n 1 "$rows" | cut -f2- | tr '\t' ' ')"
}

to_ms() { # "311.00us" / "1.20ms" / "2.01s" -> ms
  awk -v v="$1" 'BEGIN {
    if (v == "") { print "-"; exit }
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.2f", n }'
}
to_mib() { # "1.23MB" -> MiB
  awk -v v="$1" 'BEGIN {
    if (v == "") { print "-"; exit }
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "B") n /= 1048576; else if (u == "KB") n /= 1024; else if (u == "GB") n *= 1024
    printf "%.2f", n }'
}
wrk_cell() { # system scenario secs url [wrk args...]
  local sys=$1 scen=$2 secs=$3 url=$4 out errs t0 t1 n note=""
  shift 4
  t0=$(cpu_ticks "$sys_pid")
  out=$(as_client wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency "$@" "$url" 2>&1) || true
  t1=$(cpu_ticks "$sys_pid")
  printf '== round %s %s\n%s\n' "$round" "$scen" "$out" >>"$dir/wrk-$sys.log"
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  errs=$(awk '/Socket errors:/ { gsub(/,/, ""); s += $4 + $6 + $8 + $10 } /Non-2xx/ { s += $NF } END { print s + 0 }' <<<"$out")
  [ -z "$n" ] && note="wrk failed: $(tail -n 1 <<<"$out")"
  row "$sys" "$scen" \
    "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")" \
    "$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")" \
    "$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")" \
    "$(to_mib "$(awk '/Transfer\/sec/ {print $2}' <<<"$out")")" "$errs" \
    "$(us_per_req $((t1 - t0)) "${n:-0}")" "$(rss_mb "$sys_pid")" "$note"
}
sni_cell() { # system
  local out t0 t1
  t0=$(cpu_ticks "$sys_pid")
  out=$(as_client timeout 300 "$dir/client/deno" run --allow-net --allow-read "$dir/client/sni_client.ts" \
    "$NAMES" "$CONNS" "$dir/ca.pem" bench.test /ok 2>&1 | tail -n 1) || true
  t1=$(cpu_ticks "$sys_pid")
  printf 'round %s %s\n' "$round" "$out" >>"$dir/sni-$1.log"
  # {"requests":..,"errors":..,"seconds":..,"rps":..,"p50_ms":..,"p99_ms":..,"bytes":..}

  get() { grep -o "\"$1\":[^,}]*" <<<"$out" | head -n 1 | cut -d: -f2 | tr -d '"'; }
  local note=""
  [ -n "$(get first_error)" ] && note="first error: $(grep -o '"first_error":"[^"]*' <<<"$out" | cut -d'"' -f4)"
  [ -z "$(get requests)" ] && note="client failed: $out"
  row "$1" "sni-$NAMES" "$(get rps | cut -d. -f1)" "$(get p50_ms)" "$(get p99_ms)" "-" "$(get errors)" \
    "$(us_per_req $((t1 - t0)) "$(get requests)")" "$(rss_mb "$sys_pid")" "$note"
}
latency_cell() { # system: fixed-rate latency
  local out t0 t1
  t0=$(cpu_ticks "$sys_pid")
  out=$(as_client timeout 120 "$dir/client/deno" run --allow-net --allow-read "$dir/client/rate_client.ts" \
    "$FRONT" 443 ka.bench.test "$dir/ca.pem" /ok "$RATE" "$CONNS" "$SECS" 2>&1 | tail -n 1) || true
  t1=$(cpu_ticks "$sys_pid")
  printf 'round %s %s\n' "$round" "$out" >>"$dir/latency-$1.log"
  get() { grep -o "\"$1\":[^,}]*" <<<"$out" | head -n 1 | cut -d: -f2 | tr -d '"'; }
  # The per-request p90/max stay in the raw file's log (latency-<system>.log), not the table.
  local note=""
  [ -n "$(get first_error)" ] && note="first error: $(grep -o '"first_error":"[^"]*' <<<"$out" | cut -d'"' -f4)"
  [ -z "$(get requests)" ] && note="client failed: $out"
  row "$1" "latency@$RATE/s" \
    "$(awk -v n="$(get requests)" -v s="$SECS" 'BEGIN { if (n != "") printf "%.0f", n / s }')" \
    "$(get p50_ms)" "$(get p99_ms)" "-" "$(get errors)" \
    "$(us_per_req $((t1 - t0)) "$(get requests)")" "$(rss_mb "$sys_pid")" "$note"
}

h2_cell() { # system: HTTP/2, CONNS connections x 10 concurrent streams (h2load)
  local sys=$1 out t0 t1 n rps errs note=""
  t0=$(cpu_ticks "$sys_pid")
  out=$(as_client h2load -c"$CONNS" -m 10 -D "$SECS" https://ka.bench.test/ok 2>&1) || true
  t1=$(cpu_ticks "$sys_pid")
  printf '== round %s h2\n%s\n' "$round" "$out" >>"$dir/h2load-$sys.log"
  # "finished in 6.00s, 12345.67 req/s, ..." and "requests: N total, N started, N done,
  # N succeeded, N failed, N errored, N timeout"
  rps=$(awk '/^finished in/ { gsub(/,/, ""); printf "%.0f", $4 }' <<<"$out")
  n=$(awk '/^requests:/ { print $8 }' <<<"$out")
  errs=$(awk '/^requests:/ { print $10 + $12 }' <<<"$out")
  if [ -z "$rps" ] || [ "${n:-0}" = 0 ]; then
    note="h2load: $(grep -m 1 -iE 'no protocol|error|failed' <<<"$out" || tail -n 1 <<<"$out")"
    rps=-
  fi
  row "$sys" h2 "$rps" - - - "${errs:-0}" "$(us_per_req $((t1 - t0)) "${n:-0}")" \
    "$(rss_mb "$sys_pid")" "$note"
}

idle_cell() { # system -> RSS with IDLE idle intercepted connections
  local cpid line i
  bg_client "$dir/client/deno" run --allow-net --allow-read "$dir/client/idle_client.ts" \
    "$IDLE" idle.bench.test "$dir/ca.pem" 32 >"$dir/idle-$1.log" 2>&1 &
  cpid=$!
  pids+=("$cpid")
  for i in $(seq 1800); do
    grep -q '^holding' "$dir/idle-$1.log" && break
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.1
  done
  sleep "${IDLE_SETTLE:-10}" # let the proxy settle (GC, pools) with the connections idle
  line=$(grep '^holding' "$dir/idle-$1.log" || echo "holding ? ? (client failed: $(tail -n 1 "$dir/idle-$1.log"))")
  idle_rss=$(rss_mb "$sys_pid")
  if [[ $1 == sluice* ]]; then # where the memory is, from sluice's own /metrics
    log "sluice with idle connections: $(inns curl -s --max-time 5 http://127.0.0.1:19090/metrics |
      awk '/^(process_resident_memory_bytes|sluice_js_memory_bytes)/ { printf "%s %.1f MiB; ", $1, $2 / 1048576 }')"
  fi
  idle_note="$(cut -d' ' -f2 <<<"$line") open, $(cut -d' ' -f3- <<<"$line") errors"
  stop_pid "$cpid"
  sleep 1
}

cell() { [[ " $CELLS " == *" $1 "* ]]; } # is this scenario selected?

run_system() { # name [cells]: one round of one system; the last round also measures idle memory
  local sys=$1 cells=${2:-$CELLS} start_rss after_rss fp
  if [ "${AVAILABLE[$sys]:-0}" != 1 ]; then
    row "$sys" all - - - - - - - "${UNAVAILABLE[$sys]:-n/a (not available)}"
    return 0
  fi
  log "== round $round/$ROUNDS: $sys"
  if ! start_system "$sys"; then
    system_log "$sys" >&2
    row "$sys" all - - - - - - - "did not start (see the log above)"
    stop_system "$sys"
    return 0
  fi
  redirect_to "${PORT[$sys]}"
  # Sanity: the client must see nginx's own certificate directly and a minted one through a
  # proxy, and get "ok" back; otherwise the redirect is not doing what the table claims.
  fp=$(as_client openssl s_client -connect "$FRONT:443" -servername ka.bench.test </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 2>/dev/null || true)
  body=$(as_client curl -sS --max-time 10 --cacert "$dir/ca.pem" https://ka.bench.test/ok 2>&1 || true)
  if [ "$body" != ok ] || { [ "$sys" = direct ] && [ "$fp" != "$origin_fp" ]; } ||
    { [ "$sys" != direct ] && [ "$fp" = "$origin_fp" ]; }; then
    log "$sys: sanity check failed (body '$body', leaf $fp)"
    system_log "$sys" >&2
    row "$sys" all - - - - - - - "sanity check failed: $body"
    stop_system "$sys"
    return 0
  fi
  start_rss=$(rss_mb "$sys_pid")
  as_client wrk -t"$THREADS" -c"$CONNS" -d"${WARM}s" https://ka.bench.test/ok >/dev/null 2>&1 || true
  local CELLS=$cells # cell() reads it
  cell keep-alive && wrk_cell "$sys" keep-alive "$SECS" https://ka.bench.test/ok
  cell new-conn && wrk_cell "$sys" new-conn "$SECS" https://ka.bench.test/ok -H "Connection: close"
  cell 1MB && wrk_cell "$sys" 1MB "$SECS" https://ka.bench.test/1m
  cell sni && sni_cell "$sys"
  cell latency && latency_cell "$sys"
  cell h2 && h2_cell "$sys"
  after_rss=$(rss_mb "$sys_pid")
  if [ "$round" = "$ROUNDS" ] && [ "$sys" = sluice ] && [ "$SOAK" -gt 0 ]; then soak; fi
  if [ "$round" = "$ROUNDS" ] && [ "$sys" != direct ] && [ "$cells" = "$CELLS_ALL" ]; then
    # Idle memory on a fresh process, so the figure is the cost of the idle connections
    # themselves, not of what the scenarios left behind (caches, pools, heap growth).
    stop_system "$sys"
    if start_system "$sys"; then
      redirect_to "${PORT[$sys]}"
      fresh_rss=$(rss_mb "$sys_pid")
      idle_cell "$sys"
    else
      fresh_rss="-" idle_rss="-" idle_note="did not restart"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$start_rss" "$after_rss" "$fresh_rss" "$idle_rss" "$idle_note" >>"$memory"
  fi
  stop_system "$sys"
}

soak() { # keep-alive load on sluice for SOAK seconds, RSS every 10 s
  local wpid t samples=()
  log "soak: ${SOAK}s keep-alive on sluice"
  bg_client wrk -t"$THREADS" -c"$CONNS" -d"${SOAK}s" --latency https://ka.bench.test/ok >"$dir/soak-wrk.log" 2>&1 &
  wpid=$!
  pids+=("$wpid")
  for ((t = 0; t <= SOAK; t += 10)); do
    samples+=("$(rss_mb "$sys_pid")")
    # Where the memory is (sluice's /metrics): heap growth would be a JS leak, the rest native.
    log "soak t=${t}s RSS ${samples[-1]} MiB; $(inns curl -s --max-time 5 http://127.0.0.1:19090/metrics |
      awk '/^sluice_js_memory_bytes/ { sub(/sluice_js_memory_bytes\{kind="/, ""); sub(/"\}/, ""); printf "%s %.1f MiB ", $1, $2 / 1048576 }')"
    [ "$t" -lt "$SOAK" ] && sleep 10
  done
  wait "$wpid" 2>/dev/null || true
  printf '%s\n' "${samples[@]}" >"$dir/soak-rss.txt"
  soak_summary=$(awk -v secs="$SOAK" 'NR == 1 { first = $1 } { last = $1; if ($1 > max) max = $1 }
    END { printf "soak %ss keep-alive: RSS first %s MiB, last %s MiB, max %s MiB (%d samples, every 10 s)", secs, first, last, max, NR }' "$dir/soak-rss.txt")
  soak_summary+="; $(awk '/Requests\/sec/ {printf "%.0f req/s", $2}' "$dir/soak-wrk.log"), $(grep -Eo 'Socket errors: .*|Non-2xx.*' "$dir/soak-wrk.log" | tr '\n' ' ' || true)"
  log "$soak_summary"
}

CELLS_ALL=$CELLS
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# "p99 added" needs direct's latency in the same round: measured even when direct is not asked for.
baseline=""
if cell latency && [[ " $SYSTEMS " != *" direct "* ]]; then baseline=direct; fi
read -r -a order <<<"$SYSTEMS"
soak_summary=""
for ((round = 1; round <= ROUNDS; round++)); do
  # Each round starts one system later, so no system always runs first (or after the same one).
  for ((i = 0; i < ${#order[@]}; i++)); do
    run_system "${order[$(((i + round - 1) % ${#order[@]}))]}"
  done
  if [ -n "$baseline" ]; then run_system direct latency; fi
done

profile_summary=""
if [ "$PROFILE" = 1 ]; then
  log "== sluice under --cpu-prof (${SECS}s $PROFILE_SCENARIO)"
  mkdir -p "$dir/prof"
  if start_sluice "$base_workers" --cpu-prof --cpu-prof-dir="$dir/prof"; then
    redirect_to "${PORT[sluice]}"
    as_client wrk -t"$THREADS" -c"$CONNS" -d"${WARM}s" https://ka.bench.test/ok >/dev/null 2>&1 || true
    rows="$dir/profile.tsv" round=profile # not one of the rounds
    if [ "$PROFILE_SCENARIO" = new-conn ]; then
      wrk_cell sluice-profiled new-conn "$SECS" https://ka.bench.test/ok -H "Connection: close"
    elif [ "$PROFILE_SCENARIO" = h2 ]; then
      h2_cell sluice-profiled
    elif [ "$PROFILE_SCENARIO" = 1MB ]; then
      wrk_cell sluice-profiled 1MB "$SECS" https://ka.bench.test/1m
    else
      wrk_cell sluice-profiled keep-alive "$SECS" https://ka.bench.test/ok
    fi
    # SIGTERM: sluice drains and exits normally, which writes the profile.
    t0=$(date +%s)
    stop_system sluice 120
    log "sluice exited $(($(date +%s) - t0)) s after SIGTERM"
    prof=$(ls "$dir"/prof/*.cpuprofile 2>/dev/null | head -n 1 || true)
    if [ -n "$prof" ]; then
      [ -n "$PROFILE_OUT" ] && cp "$prof" "$PROFILE_OUT"
      profile_summary=$("$DENO" run --allow-read bench/lib/cpuprofile_top.ts "$prof" 15)
    else
      profile_summary="no .cpuprofile was written (did sluice exit normally?)"
    fi
  fi
fi

# ---------------------------------------------------------------- the table
{
  echo "sluice peers benchmark: $(nproc) cores shared by client, proxy and upstream; wrk -t$THREADS -c$CONNS," \
    "${SECS}s per cell, $ROUNDS round(s), medians; $(date -u +%FT%TZ); sluice $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git --no-optional-locks -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
  echo "Load average (1/5/15 min) before the first round (no load yet): $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg). Anything else running on the machine shows up in the figures."
  [ -n "$base_workers" ] && echo "sluice and sluice (hop) run with $base_workers."
  [ "$ROUNDS" -lt 5 ] && echo "(fewer than 5 rounds: a quick check, not a figure to publish)"
  echo
  "$DENO" run --allow-read "$repo/bench/peers/summarize.ts" "$raw" "$memory" "$SYSTEMS${baseline:+ $baseline}" "$RATE" "$IDLE" "$WORKERS"
  [ -n "$soak_summary" ] && { echo; echo "$soak_summary"; }
  if [ -n "$profile_summary" ]; then
    echo
    echo "$profile_summary"
  fi
} >"$OUT.md"
echo
cat "$OUT.md"
echo
echo "raw per-round numbers: $raw; memory: $memory; this table: $OUT.md"
