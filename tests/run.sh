#!/usr/bin/env bash
# The whole test suite on a fresh machine: test requirements, Debian's Chromium for the
# browser tests (never Playwright's own download: there is no internet for it), then pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` or `--update-golden`.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -q -r requirements-test.txt

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium fonts-dejavu-core
fi

exec python -m pytest "$@"
