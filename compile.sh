#!/usr/bin/env bash
# Builds the single binary dist/sluice with `deno compile`.
#
# deno compile needs the target's runtime ("denort"). It downloads it from Deno's
# download host unless DENORT_BIN points at a denort binary. Machines that cannot
# reach that host (air-gapped builders, this project's CI) must set DENORT_BIN;
# a full `deno` binary does NOT work as DENORT_BIN (the result behaves like the
# deno CLI). Exit status: 0 built, 1 build failed, 3 no runtime obtainable.
set -euo pipefail
cd "$(dirname "$0")"
if command -v deno >/dev/null 2>&1; then DENO=(deno); else DENO=(npx -y deno@2.9.6); fi
out=${OUT:-dist/sluice}
mkdir -p "$(dirname "$out")"

# The permissions the binary runs with, and why (docs/deploy.md):
#   net    proxy, admin and DNS listeners; upstream connections
#   read   policy, CA, credential files, state dir, system CA bundle, /proc (socket options)
#   write  state dir (CA, placeholder key), audit log, sluice run's temp files
#   env    env: credential sources, NOTIFY_SOCKET, STATE_DIRECTORY, CREDENTIALS_DIRECTORY
#   ffi    setsockopt/getsockopt (TCP_NODELAY on listeners, SO_ORIGINAL_DST) through libc
#   run    only these programs: netfilter, namespaces, privilege drop, readiness fallback,
#          sluice run's sandbox (unshare, mount) and its CA files for children (openssl, keytool)
#   sys    uid/gid and hostname lookups
perms=(
  --allow-net --allow-read --allow-write --allow-env --allow-ffi --allow-sys
  --allow-run=nft,iptables,ip6tables,iptables-restore,ip6tables-restore,ip,setpriv,unshare,mount,getent,systemd-notify,sysctl,openssl,keytool
)
# V8's young generation capped at 2 MiB per semi-space: ~20 MiB less RSS with many idle
# connections, no measurable cost in throughput (bench/peers.sh, docs/performance.md).
v8=(--v8-flags=--max-semi-space-size=2)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# deno compile does not follow `new Worker(...)`: the worker's module is named here
# (lib/gateway/workers.ts; without it, serve runs one thread and says why).
include=(--include lib/gateway/worker_main.ts)
if ! "${DENO[@]}" compile "${perms[@]}" "${v8[@]}" "${include[@]}" --output "$out" main.ts 2>&1 | tee "$log"; then
  if grep -qiE "download|denort|dl\.deno\.land|error sending request|dns error" "$log"; then
    echo "compile.sh: no Deno runtime (denort) could be obtained for deno compile." >&2
    echo "  Set DENORT_BIN=/path/to/denort (from the denort-<target>.zip release asset of Deno $("${DENO[@]}" --version | head -1 | cut -d' ' -f2))," >&2
    echo "  or build on a machine that can reach Deno's download host." >&2
    exit 3
  fi
  echo "compile.sh: deno compile failed (see above)" >&2
  exit 1
fi
echo "compile.sh: built $out"
