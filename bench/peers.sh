#!/usr/bin/env bash
# sluice against its peers, in ONE run on this machine: direct (no proxy), sluice, squid
# (ssl-bump) and mitmproxy (mitmdump), one after another, same harness, one table at the end.
#
# Harness: the client (wrk, or a small Deno client) runs in a network namespace this script
# creates, as a dedicated uid; nft in that namespace (type nat hook output) REDIRECTs that
# uid's TCP to 192.0.2.10:443 to the system under test ("direct" redirects to nginx itself).
# nginx is the TLS upstream, with a test CA made here by openssl; every proxy mints its leaves
# from that CA and trusts it upstream. 192.0.2.10 (documentation range) lives on the
# namespace's loopback, so squid and mitmproxy, which connect to the original destination,
# reach nginx; their own connections are not redirected (another uid). Nothing leaves the
# namespace: it has no interface but lo. Everything is removed on every exit path.
# sluice resolves the names itself through the namespace's hosts file.
#
#   sudo bench/peers.sh
#
# Environment:
#   SECS=10        seconds per wrk cell          SOAK=0   sluice keep-alive soak (s), RSS every 10 s
#   SYSTEMS="direct sluice squid mitmproxy"      NAMES=1000 distinct SNI names  IDLE=1000 idle conns
#   PROFILE=0      1: one more sluice run under `deno run --cpu-prof`, summarized
#   PROFILE_SCENARIO=keep-alive                  or new-conn: what the profiled run does
#   PROFILE_OUT=   copy the .cpuprofile there    KEEP=0   1: keep the temp dir (logs) for debugging
#   CELLS="keep-alive new-conn 1MB sni latency"  the scenarios to run (memory is always measured)
#   RATE=1000      requests/s of the fixed-rate latency scenario
#   SLUICE_DENO_FLAGS=  extra `deno run` flags for sluice   SLUICE_ENV=  extra VAR=value for sluice
#   DENO=deno
#
# Scenarios (wrk -t2 -c16, HTTP/1.1):
#   keep-alive   GET /ok (2-byte body) on persistent connections
#   new-conn     the same with "Connection: close": one full TLS handshake per request (wrk does
#                not resume sessions); wrk's latency starts after the handshake, so read req/s
#   1MB          GET /1m (1 MiB random body), MiB/s
#   sni-1000     bench/lib/sni_client.ts: n0..n999.bench.test once each, a fresh connection and
#                client per name, 16 in flight: the first pass, so every name is a new leaf
#   latency      bench/lib/rate_client.ts: GET /ok at a fixed RATE over 16 keep-alive connections,
#                latency from each request's scheduled time (no coordinated omission): the
#                system's own added latency, not its queue at full load
# Memory: RSS (VmRSS, whole process tree) at start and after the scenarios; then the system is
# restarted and measured fresh, and with IDLE idle intercepted connections open
# (bench/lib/idle_client.ts).
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
SYSTEMS=${SYSTEMS:-direct sluice squid mitmproxy}
NAMES=${NAMES:-1000}
IDLE=${IDLE:-1000}
KEEP=${KEEP:-0}
CELLS=${CELLS:-keep-alive new-conn 1MB sni latency}
RATE=${RATE:-1000}
# The V8 flag compile.sh bakes into the binary, so the figures are the shipped binary's.
SLUICE_DENO_FLAGS=${SLUICE_DENO_FLAGS---v8-flags=--max-semi-space-size=2}
SLUICE_ENV=${SLUICE_ENV-}
DENO=${DENO:-deno}
DENO=$(command -v "$DENO")
THREADS=2
CONNS=16
WARM=2
CLIENT_UID=64123 # the client's uid: the only traffic the REDIRECT rule matches
FRONT=192.0.2.10
declare -A PORT=([direct]=443 [sluice]=15443 [squid]=3129 [mitmproxy]=8080)

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

for tool in wrk nft ip openssl nginx setpriv curl; do
  command -v "$tool" >/dev/null || { echo "bench/peers.sh needs $tool (apt-get install wrk nftables iproute2 openssl nginx-light util-linux curl)" >&2; exit 1; }
done

# ---------------------------------------------------------------- peers: install what is missing
declare -A AVAILABLE=([direct]=1 [sluice]=1)
apt_updated=0
ensure_pkg() { # command package
  command -v "$1" >/dev/null && return 0
  if [ "$apt_updated" = 0 ]; then apt-get update -q >"$dir/apt.log" 2>&1 || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >>"$dir/apt.log" 2>&1 || true
  command -v "$1" >/dev/null
}
for sys in $SYSTEMS; do
  case $sys in
    squid) ensure_pkg squid squid-openssl && AVAILABLE[squid]=1 || AVAILABLE[squid]=0 ;;
    mitmproxy) ensure_pkg mitmdump mitmproxy && AVAILABLE[mitmproxy]=1 || AVAILABLE[mitmproxy]=0 ;;
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
start_sluice() { # extra deno flags...
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
  if "$DENO" run -A "$repo/main.ts" serve --help 2>/dev/null | grep -q -- "--limit"; then
    SLUICE_LIMITS="--limit per-client=4096"
  fi
  # shellcheck disable=SC2086 # SLUICE_DENO_FLAGS and SLUICE_LIMITS are lists of flags
  bg_inns env $SLUICE_ENV "$DENO" run -A $SLUICE_DENO_FLAGS "$@" "$repo/main.ts" serve --policy "$dir/sluice.yaml" --proxy 127.0.0.1:0 \
    --transparent-https "127.0.0.1:${PORT[sluice]}" --admin 127.0.0.1:19090 --state "$dir/sluice-state" --drain-timeout 1 \
    --log-format json $SLUICE_LIMITS >"$dir/sluice.log" 2>&1 &
  sys_pid=$!
  pids+=("$sys_pid")
  wait_listen "${PORT[sluice]}" 60 "$sys_pid"
}
start_squid() {
  mkdir -p "$dir/squid"
  sed "s#@DIR@#$dir#g; s#@PORT@#${PORT[squid]}#g; s#@PORT2@#3130#g" bench/lib/squid.conf >"$dir/squid.conf"
  /usr/lib/squid/security_file_certgen -c -s "$dir/squid/ssldb" -M 64MB >/dev/null 2>&1
  chown -R proxy:proxy "$dir/squid"
  bg_inns squid -N -f "$dir/squid.conf" >"$dir/squid.log" 2>&1 &
  sys_pid=$!
  pids+=("$sys_pid")
  # Wait for the listener without ever connecting to it (squid's intercept port must not be
  # probed directly: see docs/performance.md).
  wait_listen "${PORT[squid]}" 30 "$sys_pid"
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
    sluice) start_sluice ;;
    squid) start_squid ;;
    mitmproxy) start_mitmproxy ;;
  esac
}
stop_system() { # name [seconds to exit]
  [ "$1" = direct ] && return 0
  stop_pid "$sys_pid" "${2:-10}"
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" != "$sys_pid" ] && keep+=("$p"); done
  pids=("${keep[@]}")
}
system_log() {
  case $1 in
    sluice) tail -n 20 "$dir/sluice.log" ;;
    squid) tail -n 20 "$dir/squid.log" "$dir/squid/cache.log" 2>/dev/null ;;
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
results="$dir/results.tsv" # system scenario rps p50ms p99ms MiB/s errors note rss cpu_us_per_req
memory="$dir/memory.tsv"   # system start after idle idle_note
: >"$results"
: >"$memory"

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
  local sys=$1 scen=$2 secs=$3 url=$4 out errs t0 t1 n
  shift 4
  t0=$(cpu_ticks "$sys_pid")
  out=$(as_client wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency "$@" "$url" 2>&1) || true
  t1=$(cpu_ticks "$sys_pid")
  echo "$out" >>"$dir/wrk-$sys.log"
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  errs=$(awk '/Socket errors:/ { gsub(/,/, ""); s += $4 + $6 + $8 + $10 } /Non-2xx/ { s += $NF } END { print s + 0 }' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$scen" \
    "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")" \
    "$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")" \
    "$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")" \
    "$(to_mib "$(awk '/Transfer\/sec/ {print $2}' <<<"$out")")" "$errs" "" "$(rss_mb "$sys_pid")" \
    "$(us_per_req $((t1 - t0)) "${n:-0}")" >>"$results"
  tail -n 1 "$results" | tr '\t' ' ' >&2
}
sni_cell() { # system
  local out t0 t1
  t0=$(cpu_ticks "$sys_pid")
  out=$(as_client timeout 300 "$dir/client/deno" run --allow-net --allow-read "$dir/client/sni_client.ts" \
    "$NAMES" "$CONNS" "$dir/ca.pem" bench.test /ok 2>&1 | tail -n 1) || true
  t1=$(cpu_ticks "$sys_pid")
  echo "$out" >>"$dir/sni-$1.log"
  # {"requests":..,"errors":..,"seconds":..,"rps":..,"p50_ms":..,"p99_ms":..,"bytes":..}

  get() { grep -o "\"$1\":[^,}]*" <<<"$out" | head -n 1 | cut -d: -f2 | tr -d '"'; }
  local note=""
  [ -n "$(get first_error)" ] && note="first error: $(grep -o '"first_error":"[^"]*' <<<"$out" | cut -d'"' -f4)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "sni-$NAMES" "$(get rps | cut -d. -f1)" \
    "$(get p50_ms)" "$(get p99_ms)" "-" "$(get errors)" "$note" "$(rss_mb "$sys_pid")" \
    "$(us_per_req $((t1 - t0)) "$(get requests)")" >>"$results"
  tail -n 1 "$results" | tr '\t' ' ' >&2
}
latency_cell() { # system: fixed-rate latency
  local out t0 t1
  t0=$(cpu_ticks "$sys_pid")
  out=$(as_client timeout 120 "$dir/client/deno" run --allow-net --allow-read "$dir/client/rate_client.ts" \
    "$FRONT" 443 ka.bench.test "$dir/ca.pem" /ok "$RATE" "$CONNS" "$SECS" 2>&1 | tail -n 1) || true
  t1=$(cpu_ticks "$sys_pid")
  echo "$out" >>"$dir/latency-$1.log"
  get() { grep -o "\"$1\":[^,}]*" <<<"$out" | head -n 1 | cut -d: -f2 | tr -d '"'; }
  local note="p90 $(get p90_ms) ms, max $(get max_ms) ms"
  [ -n "$(get first_error)" ] && note+="; first error: $(grep -o '"first_error":"[^"]*' <<<"$out" | cut -d'"' -f4)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "latency@$RATE/s" \
    "$(awk -v n="$(get requests)" -v s="$SECS" 'BEGIN { if (n != "") printf "%.0f", n / s }')" \
    "$(get p50_ms)" "$(get p99_ms)" "-" "$(get errors)" "$note" "$(rss_mb "$sys_pid")" \
    "$(us_per_req $((t1 - t0)) "$(get requests)")" >>"$results"
  tail -n 1 "$results" | tr '\t' ' ' >&2
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
  sleep 2 # let the proxy settle (GC, pools) with the connections idle
  line=$(grep '^holding' "$dir/idle-$1.log" || echo "holding ? ? (client failed: $(tail -n 1 "$dir/idle-$1.log"))")
  idle_rss=$(rss_mb "$sys_pid")
  if [ "$1" = sluice ]; then # where the memory is, from sluice's own /metrics
    log "sluice with idle connections: $(inns curl -s --max-time 5 http://127.0.0.1:19090/metrics |
      awk '/^(process_resident_memory_bytes|sluice_js_memory_bytes)/ { printf "%s %.1f MiB; ", $1, $2 / 1048576 }')"
  fi
  idle_note="$(cut -d' ' -f2 <<<"$line") open, $(cut -d' ' -f3- <<<"$line") errors"
  stop_pid "$cpid"
  sleep 1
}

cell() { [[ " $CELLS " == *" $1 "* ]]; } # is this scenario selected?

run_system() { # name
  local sys=$1 start_rss after_rss fp
  if [ "${AVAILABLE[$sys]:-0}" != 1 ]; then
    printf '%s\tall\t-\t-\t-\t-\t-\tnot available (package could not be installed)\t-\n' "$sys" >>"$results"
    return 0
  fi
  log "== $sys"
  if ! start_system "$sys"; then
    system_log "$sys" >&2
    printf '%s\tall\t-\t-\t-\t-\t-\tdid not start (see log above)\t-\n' "$sys" >>"$results"
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
    printf '%s\tall\t-\t-\t-\t-\t-\tsanity check failed: %s\t-\n' "$sys" "$body" >>"$results"
    stop_system "$sys"
    return 0
  fi
  start_rss=$(rss_mb "$sys_pid")
  as_client wrk -t"$THREADS" -c"$CONNS" -d"${WARM}s" https://ka.bench.test/ok >/dev/null 2>&1 || true
  cell keep-alive && wrk_cell "$sys" keep-alive "$SECS" https://ka.bench.test/ok
  cell new-conn && wrk_cell "$sys" new-conn "$SECS" https://ka.bench.test/ok -H "Connection: close"
  cell 1MB && wrk_cell "$sys" 1MB "$SECS" https://ka.bench.test/1m
  cell sni && sni_cell "$sys"
  cell latency && latency_cell "$sys"
  after_rss=$(rss_mb "$sys_pid")
  if [ "$sys" = sluice ] && [ "$SOAK" -gt 0 ]; then soak; fi
  if [ "$sys" != direct ]; then
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

soak_summary=""
for sys in $SYSTEMS; do run_system "$sys"; done

profile_summary=""
if [ "$PROFILE" = 1 ]; then
  log "== sluice under --cpu-prof (${SECS}s $PROFILE_SCENARIO)"
  mkdir -p "$dir/prof"
  if start_sluice --cpu-prof --cpu-prof-dir="$dir/prof"; then
    redirect_to "${PORT[sluice]}"
    as_client wrk -t"$THREADS" -c"$CONNS" -d"${WARM}s" https://ka.bench.test/ok >/dev/null 2>&1 || true
    if [ "$PROFILE_SCENARIO" = new-conn ]; then
      wrk_cell sluice-profiled new-conn "$SECS" https://ka.bench.test/ok -H "Connection: close"
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
echo
echo "sluice peers benchmark: $(nproc) cores shared by client, proxy and upstream; wrk -t$THREADS -c$CONNS, ${SECS}s per cell; $(date -u +%FT%TZ)"
echo
echo "| system | scenario | req/s | p50 ms | p99 ms | MiB/s | errors | CPU µs/req | RSS after MiB | note |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, ($10 == "" ? "-" : $10), $9, $8 }' "$results"
if [ -s "$memory" ]; then
  echo
  echo "| system | RSS at start MiB | after scenarios MiB | fresh process MiB | fresh + $IDLE idle conns MiB | idle conns |"
  echo "|---|---:|---:|---:|---:|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }' "$memory"
fi
[ -n "$soak_summary" ] && { echo; echo "$soak_summary"; }

echo
echo "Targets (sluice):"
awk -F'\t' -v idle="$IDLE" -v rate="$RATE" '
  FNR == NR { v[$1 "," $2 ",rps"] = $3; v[$1 "," $2 ",p99"] = $5; v[$1 "," $2 ",mib"] = $6; v[$1 "," $2 ",cpu"] = $10; next }
  $1 == "sluice" { rss = $5 }
  function num(x) { return x != "" && x != "-" }
  function ratio(name, a, b, want,   r) {
    if (!num(a) || !num(b) || b == 0) { printf "  %-42s n/a\n", name; return }
    r = a / b; printf "  %-42s %6.2fx  (target >= %sx) %s\n", name, r, want, (r >= want ? "met" : "NOT met")
  }
  END {
    ratio("keep-alive req/s vs squid", v["sluice,keep-alive,rps"], v["squid,keep-alive,rps"], 2)
    ratio("keep-alive req/s vs direct", v["sluice,keep-alive,rps"], v["direct,keep-alive,rps"], 0.25)
    ratio("new-connection req/s vs squid", v["sluice,new-conn,rps"], v["squid,new-conn,rps"], 5)
    ratio("1 MB MiB/s vs squid", v["sluice,1MB,mib"], v["squid,1MB,mib"], 3)
    a = v["sluice,keep-alive,p99"]; b = v["direct,keep-alive,p99"]
    if (num(a) && num(b)) printf "  %-42s %6.2f ms (target < 2 ms) %s\n", "keep-alive p99 added over direct, full load", a - b, (a - b < 2 ? "met" : "NOT met")
    a = v["sluice,latency@" rate "/s,p99"]; b = v["direct,latency@" rate "/s,p99"]
    if (num(a) && num(b)) printf "  %-42s %6.2f ms (target < 2 ms) %s\n", "p99 added over direct at " rate " req/s", a - b, (a - b < 2 ? "met" : "NOT met")
    for (i = split("keep-alive new-conn 1MB", sc, " "); i > 0; i--) {
      a = v["sluice," sc[i] ",cpu"]; b = v["squid," sc[i] ",cpu"]
      if (num(a) && num(b)) printf "  %-42s %6s us vs squid %s us (information)\n", "proxy CPU per request, " sc[i], a, b
    }
    if (num(rss)) printf "  %-42s %6.1f MiB (target < 150 MB) %s\n", "RSS with " idle " idle connections", rss, (rss * 1.048576 < 150 ? "met" : "NOT met")
  }' "$results" "$memory"
if [ -n "$profile_summary" ]; then
  echo
  echo "$profile_summary"
fi
