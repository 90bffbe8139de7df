#!/usr/bin/env bash
# First data-path figures: wrk through sluice's transparent listener versus the
# same upstream directly, all inside a network namespace this script creates
# (and removes on every exit path). Loopback only; bounded runs.
#
#   sudo bench/datapath.sh [seconds]      (needs root, wrk, nft, ip)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
ns="sluice-bench-$$"
dir=$(mktemp -d)
DENO=${DENO:-deno}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "/etc/netns/$ns" "$dir"
}
trap cleanup EXIT INT TERM

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add v0 type veth peer name v1
ip -n "$ns" addr add 192.0.2.1/24 dev v0
ip -n "$ns" link set v0 up
ip -n "$ns" link set v1 up
ip netns exec "$ns" nft -f - <<'NFT'
table ip sluice_bench {
  chain out {
    type nat hook output priority -100;
    ip daddr 192.0.2.10 tcp dport 443 redirect to :15443
  }
}
NFT
# `ip netns exec` bind-mounts /etc/netns/NAME/hosts over /etc/hosts.
mkdir -p "/etc/netns/$ns"
printf '127.0.0.1 localhost\n192.0.2.10 allowed.test\n127.0.0.1 direct.test\n' > "/etc/netns/$ns/hosts"

ip netns exec "$ns" $DENO run -A test/e2e/_upstream_main.ts "$dir/up-ca.crt" 443 80 > "$dir/up.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$dir/up.log" 2>/dev/null && break; sleep 0.1; done

cat > "$dir/policy.yaml" <<YAML
version: 1
network:
  allow: [allowed.test, 127.0.0.1:443]
tls:
  upstream: { ca: [$dir/up-ca.crt] }
audit: { log: /dev/null }
YAML
sed -i 's#log: /dev/null#log: '"$dir"'/audit.jsonl#' "$dir/policy.yaml"
ip netns exec "$ns" $DENO run -A main.ts serve --policy "$dir/policy.yaml" --proxy 127.0.0.1:0 \
  --transparent-https 127.0.0.1:15443 --state "$dir/state" --resolve allowed.test=127.0.0.1 > "$dir/sluice.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q "sluice: serving" "$dir/sluice.log" 2>/dev/null && break; sleep 0.1; done

run() { # name url
  local out
  out=$(ip netns exec "$ns" wrk -t2 -c16 -d"${secs}s" --latency "$2" 2>&1)
  printf '%-28s %10s req/s  p50 %8s  p99 %8s  errors %s\n' "$1" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")" \
    "$(grep -Eo 'Non-2xx or 3xx responses: [0-9]+|Socket errors: .*' <<<"$out" | tr '\n' ' ' || true)"
}
echo "wrk -t2 -c16 -d${secs}s, keep-alive, small JSON response (client, proxy and upstream share 2 cores)"
run "direct (no proxy)" "https://direct.test/echo"
run "sluice transparent" "https://allowed.test/echo"
