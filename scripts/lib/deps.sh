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

ensure_all() {
  ensure_cargo
  ensure_ffmpeg
  ensure_rabbitmq
}
