# shellcheck shell=bash
# Shared helpers for scripts/*.sh. Source it (`. "$(dirname "$0")/lib.sh"`); it only
# defines functions and never changes state. Messages are prefixed with $LOG_PREFIX
# (default: the calling script's name) so interleaved output from `make test` stays readable.

LOG_PREFIX=${LOG_PREFIX:-$(basename "${0%.sh}")}

# info MESSAGE...: progress for humans, on stdout.
info() { printf '%s: %s\n' "$LOG_PREFIX" "$*"; }

# warn MESSAGE...: something odd that does not stop the script, on stderr.
warn() { printf '%s: warning: %s\n' "$LOG_PREFIX" "$*" >&2; }

# die MESSAGE...: say what failed and what to do, on stderr, and exit 1.
die() { printf '%s: error: %s\n' "$LOG_PREFIX" "$*" >&2; exit 1; }

# have COMMAND: true when COMMAND is on PATH.
have() { command -v "$1" >/dev/null 2>&1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
# Uses bash's /dev/tcp, so it needs neither ss nor nc.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# port_owner PORT: best-effort description of the process listening on PORT (needs ss).
port_owner() {
  have ss || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n1
}

# require_free_ports HINT PORT...: die, naming the holder, when something already listens on
# one of the loopback PORTs (a server would fail at bind time with a less obvious error, or
# clients would talk to the other process). HINT says how to pick other ports.
require_free_ports() {
  local hint=$1 port owner
  shift
  for port in "$@"; do
    if port_open "$port"; then
      owner=$(port_owner "$port")
      die "port $port on 127.0.0.1 is already in use${owner:+ by $owner}; stop that process or $hint"
    fi
  done
}
