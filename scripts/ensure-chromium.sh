#!/usr/bin/env bash
# Browser tests drive Debian's Chromium; install it when missing (needs root or sudo).
set -euo pipefail
command -v chromium >/dev/null && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing Debian's chromium for the dashboard tests"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
