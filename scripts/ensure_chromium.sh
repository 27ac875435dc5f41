#!/usr/bin/env bash
# Make sure headless Chromium is available for the report's rendering test (tests/test_eval_report.py).
# Installs Debian's chromium package when it is missing and apt-get can be used (root); otherwise
# says what to install. Never fails the caller: the test itself reports a missing browser.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || command -v google-chrome >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[chromium] installing Debian's chromium package for the report test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[chromium] install failed; the report rendering test will say so" >&2
else
  echo "[chromium] not found: install chromium (e.g. 'sudo apt-get install chromium') for the report rendering test" >&2
fi
exit 0
