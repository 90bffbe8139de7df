#!/usr/bin/env bash
# Builds the single binary dist/sluice with `deno compile`.
#
# deno compile needs a runtime ("denort") for the target. It downloads one from
# Deno's download host unless DENORT_BIN points at a denort binary. Machines
# without that host (air-gapped, or this project's build machines) must set
# DENORT_BIN; a full `deno` binary does NOT work as DENORT_BIN.
set -euo pipefail
cd "$(dirname "$0")"
DENO=${DENO:-deno}
command -v "$DENO" >/dev/null 2>&1 || DENO="npx -y deno@2.9.6"
mkdir -p dist
# Permissions are those `serve` and `run` need; see docs/deploy.md (issue 6 narrows them).
if ! $DENO compile --allow-all --output dist/sluice main.ts; then
  echo "compile.sh: deno compile failed. If it could not download denort, set DENORT_BIN=/path/to/denort" >&2
  exit 1
fi
echo "compile.sh: built dist/sluice"
