# shellcheck shell=bash
# Shared set-up for scripts/demo, scripts/test and scripts/bench: install what
# is missing from Debian's packages, start RabbitMQ where it does not answer.

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $* (install sudo or run as root)"; fi
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* with your package manager"
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"
}

ensure_ffmpeg() {
  if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    apt_install ffmpeg
  fi
  case "$(ffmpeg -hide_banner -encoders 2>/dev/null)" in *libx265*) ;; *) die "this ffmpeg has no libx265 encoder (Debian's ffmpeg package has it)" ;; esac
}

# The decoder sandbox (bubblewrap, media.sandbox) and util-linux's prlimit
# (resource limits, media.limits): a worker without them refuses to start.
ensure_sandbox() {
  command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap
  command -v prlimit >/dev/null 2>&1 || apt_install util-linux
}

amqp_answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

ensure_rabbitmq() {
  if [ -n "${REELFLEET_BROKER__URL:-}" ]; then
    say "using the broker of REELFLEET_BROKER__URL"
    return 0
  fi
  if amqp_answers; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server
    # Debian's package may start it through its service; give it a moment.
    for _ in $(seq 1 20); do amqp_answers && return 0; sleep 1; done
  fi
  say "starting RabbitMQ"
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 90); do
    if amqp_answers; then
      as_root rabbitmqctl await_startup >/dev/null 2>&1 || true
      return 0
    fi
    sleep 1
  done
  die "RabbitMQ does not answer on 127.0.0.1:5672 (see /var/log/rabbitmq)"
}

pg_answers() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

# PostgreSQL for the shared-state tests: Debian's package, its cluster
# started, and a test role (reelfleet_test, allowed to create databases) that
# logs in with a password over TCP whatever the server's auth method. The job
# index's key search needs the pg_trgm extension (Debian's postgresql-NN
# ships it, as postgresql-contrib did); it is trusted since PostgreSQL 13, so
# the test role creates it in the databases it owns.
ensure_postgres() {
  if [ -n "${TEST_POSTGRES_URL:-}" ]; then
    say "using the PostgreSQL of TEST_POSTGRES_URL"
    return 0
  fi
  if ! pg_answers; then
    command -v pg_lsclusters >/dev/null 2>&1 || apt_install postgresql
    if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
      local version; version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
      as_root pg_createcluster "$version" main >/dev/null
    fi
    say "starting PostgreSQL"
    pg_lsclusters -h | while read -r version cluster _; do
      as_root pg_ctlcluster "$version" "$cluster" start 2>/dev/null || true
    done
    for _ in $(seq 1 30); do pg_answers && break; sleep 1; done
    pg_answers || die "PostgreSQL does not answer on 127.0.0.1:5432 (see /var/log/postgresql)"
  fi
  if [ -z "$(find /usr/share/postgresql -name pg_trgm.control -print -quit 2>/dev/null)" ]; then
    apt_install postgresql-contrib
  fi
  as_root runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || die "cannot create the reelfleet_test role in PostgreSQL"
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reelfleet_test') THEN
    CREATE ROLE reelfleet_test LOGIN CREATEDB PASSWORD 'reelfleet_test';
  END IF;
END $$;
SQL
  export TEST_POSTGRES_URL="postgres://reelfleet_test:reelfleet_test@127.0.0.1:5432/postgres"
}

ensure_all() {
  ensure_cargo
  ensure_ffmpeg
  ensure_sandbox
  ensure_rabbitmq
  ensure_management
}

# The RabbitMQ management API: `reelfleet queues`/`scale` read ready + unacked
# from it (KEDA's `protocol: http` reads the same), and its tests need it.
ensure_management() {
  if [ -n "${REELFLEET_BROKER__URL:-}" ]; then return 0; fi
  if (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; then return 0; fi
  say "enabling rabbitmq_management"
  as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
  for _ in $(seq 1 30); do
    (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null && return 0
    sleep 1
  done
  die "the RabbitMQ management API does not answer on 127.0.0.1:15672"
}

reelfleet_cache() {
  local dir="${XDG_CACHE_HOME:-$HOME/.cache}/reelfleet"
  mkdir -p "$dir"
  printf '%s' "$dir"
}

# promtool from Debian's prometheus package. The package is unpacked, not
# installed: installing it would start a Prometheus server on :9090.
ensure_promtool() {
  if [ -n "${PROMTOOL:-}" ] && "$PROMTOOL" --version >/dev/null 2>&1; then return 0; fi
  if command -v promtool >/dev/null 2>&1; then PROMTOOL="$(command -v promtool)"; export PROMTOOL; return 0; fi
  local dir; dir="$(reelfleet_cache)/prometheus"
  if [ ! -x "$dir/usr/bin/promtool" ]; then
    command -v apt-get >/dev/null 2>&1 || die "promtool not found: install Prometheus' promtool"
    say "fetching promtool from Debian's prometheus package"
    if [ "$apt_updated" = 0 ]; then as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) || die "apt-get download prometheus failed"
    rm -rf "$dir" && mkdir -p "$dir"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$dir"
    rm -rf "$tmp"
  fi
  export PROMTOOL="$dir/usr/bin/promtool"
}

# Python tools for the chart checks, pinned, in their own virtualenv.
ensure_pytools() {
  local venv; venv="$(reelfleet_cache)/venv"
  local want="helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.3"
  if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "$want" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! { python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null; }; then
      apt_install python3-venv
    fi
    say "python tools for the chart checks: $want"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q --disable-pip-version-check $want
    printf '%s' "$want" > "$venv/.installed"
  fi
  export REELFLEET_PY="$venv/bin/python"
}

# A compose client that can read and validate the compose file without a
# Docker engine: the compose plugin, or Debian's docker-compose.
ensure_compose() {
  if docker compose version >/dev/null 2>&1; then export COMPOSE="docker compose"; return 0; fi
  command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
  export COMPOSE="docker-compose"
}

# Headless Chromium and its WebDriver server from Debian's packages, for the
# browser tests (tests/src/browser.rs drives chromium through chromedriver).
ensure_chromium() {
  local missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# ShellCheck from Debian's package, for scripts/test.
ensure_shellcheck() {
  command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck
}

# The shell scripts scripts/test checks: every file in scripts/, scripts/lib/*.sh, .ci/run.
shell_scripts() {
  local f
  for f in scripts/* scripts/lib/*.sh deploy/gen-env .ci/run; do
    if [ -f "$f" ]; then printf '%s\n' "$f"; fi
  done
}

# cargo-machete (dependencies no code uses), from crates.io, for scripts/test.
ensure_machete() {
  command -v cargo-machete >/dev/null 2>&1 && return 0
  say "cargo install --locked cargo-machete"
  cargo install --locked --quiet cargo-machete
}
