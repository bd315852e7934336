# shellcheck shell=bash
# `cargo deny` for scripts/test: installs it where missing, checks bans,
# licenses and sources (deny.toml), then RustSec advisories from the network
# or, where the network is closed, from a local clone of the advisory
# database (ADVISORY_DB_MIRROR, a git repository of rustsec/advisory-db). When
# neither is there, it says plainly that advisories were not checked.

CARGO_DENY_VERSION=0.20.2

ensure_cargo_deny() {
  if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
    say "cargo install cargo-deny $CARGO_DENY_VERSION"
    cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
  fi
}

run_cargo_deny() {
  ensure_cargo_deny
  # cargo-deny reads every platform's dependencies, while a build downloads
  # only this one's (wasm-bindgen, android_system_properties, ...): on a
  # fresh machine they are fetched first, or `--offline` fails on them.
  say "cargo fetch (every platform's crates, for cargo deny)"
  cargo fetch --locked --quiet
  say "cargo deny: bans, licenses, sources"
  cargo deny --offline check bans licenses sources
  say "cargo deny: advisories"
  local fetch_log mirror db
  fetch_log=$(cargo deny fetch db 2>&1) && { cargo deny check advisories; return; }
  mirror=${ADVISORY_DB_MIRROR:-/work/.mirror/rustsec+advisory-db/repo}
  # Where cargo-deny keeps the database for its configured URL (it names it when the fetch fails).
  db=$(printf '%s\n' "$fetch_log" | grep -o '[^ "]*/advisory-dbs/advisory-db-[0-9a-f]*' | head -1)
  if [ -n "$db" ] && git -C "$mirror" rev-parse --git-dir >/dev/null 2>&1; then
    rm -rf "$db" && git clone -q "$mirror" "$db"
    say "advisory database from the local mirror $mirror ($(git -C "$db" log -1 --format=%cs)); the network is closed"
    cargo deny --offline check advisories
  else
    say "ADVISORIES NOT CHECKED: the advisory database cannot be fetched and no mirror is at $mirror (set ADVISORY_DB_MIRROR)"
  fi
}
