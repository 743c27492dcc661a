#!/usr/bin/env bash
# Kiln's test suite on a fresh machine, in one command.
#
# The end-to-end tests talk to real peers: redis-server (they start their
# own, on free ports; with redis-cli, a Sentinel and its replicas),
# headless Chromium (the tracking test opens a message in a browser),
# Debian's rspamd (it scores Kiln's DKIM signatures as a
# receiver would) and Tencent Cloud's official Python SDK (the API tests).
# What is missing is installed when this can (Debian's packages as root,
# the SDK with pip); otherwise it says exactly what to install, and stops.
# Then: cargo test --workspace, with any arguments given here.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_packages+=(redis-tools)
command -v rspamd >/dev/null 2>&1 || need_packages+=(rspamd)
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_packages+=(chromium-driver)
command -v curl >/dev/null 2>&1 || need_packages+=(curl)
command -v python3 >/dev/null 2>&1 || need_packages+=(python3 python3-pip)

if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "contrib/test.sh: installing ${need_packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${need_packages[@]}"
  else
    echo "contrib/test.sh: missing ${need_packages[*]}." >&2
    echo "  On Debian or Ubuntu: sudo apt-get install -y ${need_packages[*]}" >&2
    exit 1
  fi
fi

if ! python3 -c "import tencentcloud.ses" >/dev/null 2>&1; then
  echo "contrib/test.sh: installing tencentcloud-sdk-python-ses" >&2
  if ! python3 -m pip install -q tencentcloud-sdk-python-ses; then
    echo "contrib/test.sh: could not install Tencent Cloud's Python SDK." >&2
    echo "  Install it with: python3 -m pip install tencentcloud-sdk-python-ses" >&2
    exit 1
  fi
fi

# The Prometheus project's parser reads the metrics in the tests.
if ! python3 -c "import prometheus_client.openmetrics.parser" >/dev/null 2>&1; then
  echo "contrib/test.sh: installing prometheus-client (Python)" >&2
  if ! python3 -m pip install -q prometheus-client; then
    echo "contrib/test.sh: could not install the Prometheus Python client." >&2
    echo "  Install it with: python3 -m pip install prometheus-client" >&2
    exit 1
  fi
fi

exec cargo test --workspace "$@"
