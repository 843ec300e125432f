#!/usr/bin/env bash
# tests/evguard/test_compose.py checks docker-compose.yml with a real Compose parser: the
# Docker CLI's plugin when present, else Debian's docker-compose (it needs no Docker engine
# for `config`). Install it when missing (root or sudo); when that is impossible, say so and
# let the test skip with its reason instead of failing `make test` here.
set -uo pipefail
docker compose version >/dev/null 2>&1 && exit 0
command -v docker-compose >/dev/null && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing Debian's docker-compose to check docker-compose.yml"
if ! { $sudo apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq docker-compose >/dev/null; }; then
  echo "could not install docker-compose: tests/evguard/test_compose.py will skip its Compose check" >&2
fi
exit 0
