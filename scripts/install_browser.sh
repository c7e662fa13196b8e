#!/usr/bin/env bash
# Chromium from the Debian package, for the console's browser test (Playwright drives it by path).
# Skipped when it is already there, or when this is not root on a Debian-like host: the test then skips.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "install_browser: skipped (needs root and apt-get); the console's browser test will skip" >&2
  exit 0
fi
# A failed install must not fail setup: without the browser only its test skips, saying why.
if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }; then
  echo "install_browser: could not install chromium from apt; the console's browser test will skip" >&2
fi
