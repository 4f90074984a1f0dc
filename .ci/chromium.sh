#!/usr/bin/env bash
# Chromium for the replay report's browser test (integration/test_replay_html_browser.py):
# Debian's package, installed when missing. Idempotent; everything it prints goes to stderr.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # Without recommends: the browser runs headless only, so no desktop integration is needed;
  # fonts-liberation gives the page's text real glyphs in screenshots.
  apt-get install -y -qq --no-install-recommends chromium fonts-liberation >&2
fi
# The version, which also checks that the browser starts; the Debian launcher's noise is dropped.
chromium --version 2>/dev/null | cat >&2
