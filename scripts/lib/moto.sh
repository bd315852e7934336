# shellcheck shell=bash
# moto's server (S3, SQS, SNS) for the tests of the AWS front door: a second,
# independent S3 implementation with real bucket notifications. Installed from
# PyPI into reelfleet's cache; MOTO_SERVER names the binary for the tests.

MOTO_WANT="moto[server]==5.2.5"

ensure_moto() {
  local venv; venv="$(reelfleet_cache)/moto-venv"
  if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "$MOTO_WANT" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! { python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null; }; then apt_install python3-venv; fi
    say "moto's server for the SQS bridge tests: $MOTO_WANT"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$MOTO_WANT"
    printf '%s' "$MOTO_WANT" > "$venv/.installed"
  fi
  export MOTO_SERVER="$venv/bin/moto_server"
}
