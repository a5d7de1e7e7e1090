#!/usr/bin/env bash
# Makes sure open3d can load its one system library (libusb-1.0). Installs it with apt when
# running as root; otherwise prints the exact command and fails.
set -u
PY=${1:-python3}
if "$PY" -c "import open3d" >/dev/null 2>&1; then
  exit 0
fi
err=$("$PY" -c "import open3d" 2>&1 | tail -n 1)
if ! printf '%s' "$err" | grep -qi "libusb"; then
  echo "setup: 'import open3d' failed: $err"
  exit 1
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: open3d needs libusb-1.0-0; installing it with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq libusb-1.0-0 >/dev/null \
    || { echo "setup: apt-get install libusb-1.0-0 failed"; exit 1; }
  "$PY" -c "import open3d" >/dev/null 2>&1 && exit 0
  echo "setup: open3d still does not import after installing libusb-1.0-0"; exit 1
fi
echo "setup: open3d needs the system library libusb-1.0-0. Install it, then rerun make:"
echo "    sudo apt-get install -y libusb-1.0-0"
exit 1
