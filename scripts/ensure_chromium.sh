#!/usr/bin/env bash
# Installs a headless Chromium for the pay-page browser tests: Debian's chromium
# package (browser downloaders such as `playwright install` cannot reach their
# hosts here). Does nothing when one is already there or ARBRIDGE_CHROMIUM names one.
set -euo pipefail
if [ -n "${ARBRIDGE_CHROMIUM:-}" ] && [ -x "${ARBRIDGE_CHROMIUM}" ]; then exit 0; fi
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no Chromium and no apt-get: install Chromium and set ARBRIDGE_CHROMIUM to its path" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's chromium for the browser tests" >&2
if ! $SUDO apt-get install -y --no-install-recommends chromium >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y --no-install-recommends chromium >/dev/null
fi
command -v chromium >/dev/null
