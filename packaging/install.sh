#!/usr/bin/env bash
# Installs sluice: the binary, the systemd unit and an example policy.
# Idempotent: run it again to upgrade the binary and unit; an existing policy is kept.
#
#   sudo packaging/install.sh [path/to/sluice]       (default: dist/sluice from ./compile.sh)
#   DESTDIR=/tmp/stage packaging/install.sh ...     (stage into a directory; no systemctl)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../dist/sluice}
dest=${DESTDIR:-}

if [ ! -x "$bin" ]; then
  echo "install.sh: no sluice binary at $bin; build it with ./compile.sh (see README) or pass its path" >&2
  exit 1
fi
if [ -z "$dest" ] && [ "$(id -u)" != "0" ]; then
  echo "install.sh: run as root (it writes /usr/local/bin, /etc/systemd/system and /etc/sluice)" >&2
  exit 1
fi

install -d -m 0755 "$dest/usr/local/bin" "$dest/etc/systemd/system" "$dest/usr/local/share/doc/sluice"
install -d -m 0750 "$dest/etc/sluice"
install -m 0755 "$bin" "$dest/usr/local/bin/sluice"
install -m 0644 "$here/sluice.service" "$dest/etc/systemd/system/sluice.service"
install -m 0644 "$here/../README.md" "$dest/usr/local/share/doc/sluice/README.md"
if [ ! -e "$dest/etc/sluice/policy.yaml" ]; then
  install -m 0640 "$here/../examples/quickstart.yaml" "$dest/etc/sluice/policy.yaml"
  policy_note="installed an example policy at /etc/sluice/policy.yaml: edit it first"
else
  policy_note="kept your existing /etc/sluice/policy.yaml"
fi

if [ -z "$dest" ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
fi

cat <<NEXT
sluice installed ($("$dest/usr/local/bin/sluice" --version 2>/dev/null || echo "binary copied")).
- $policy_note
- check it:        sluice check /etc/sluice/policy.yaml
- start it:        systemctl enable --now sluice
- trust its CA:    sluice ca export --state /var/lib/sluice --out /usr/local/share/ca-certificates/sluice.crt && update-ca-certificates
- see decisions:   journalctl -u sluice, and the audit log the policy names
NEXT
