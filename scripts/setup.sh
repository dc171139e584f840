#!/usr/bin/env bash
# `make setup`: installs the Debian packages that building and testing Waymark need.
# Idempotent and quiet when nothing is missing: every package is checked with dpkg first,
# and `apt-get update` + `apt-get install` run only for what is actually absent.
#
#   cmake, pkg-config, libcurl4-openssl-dev, libssl-dev, zlib1g-dev, libzstd-dev, libsasl2-dev
#                         rdkafka's cmake-build of librdkafka
#   libclang-dev          bindgen for the rocksdb crate
#   python3-aiosmtpd      the real SMTP server for the email sink's tests and the demo
#   curl                  readiness probes in scripts/demo.sh
#   chromium              the dashboard's browser test (headless) and its screenshot
#   openjdk-17-jre-headless, maven
#                         the local Kafka broker (scripts/kafka.sh); only when `java`/`mvn`
#                         are not already on PATH, so a JDK installed another way is kept
#
# Rust itself is not installed here (rustup is per user); a missing cargo is reported.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

usage() {
  cat <<'EOF'
Usage: scripts/setup.sh [-h]
Installs the Debian packages Waymark's build and tests need, when they are missing.
Runs apt-get (as root, or through sudo when not root). Safe to run repeatedly.
EOF
}
case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

# --- what the project needs ----------------------------------------------------------------
packages=(
  cmake pkg-config libclang-dev
  libcurl4-openssl-dev libssl-dev zlib1g-dev libzstd-dev libsasl2-dev
  python3-aiosmtpd curl chromium
)
have java || packages+=(openjdk-17-jre-headless)
have mvn || packages+=(maven)

# --- which of them are missing ----------------------------------------------------------------
# dpkg's status must be "installed": a removed package whose config files remain ("rc")
# is still known to `dpkg -s` but is not usable.
missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done

# --- install them ------------------------------------------------------------------------------
if ((${#missing[@]})); then
  have apt-get || die "missing packages (${missing[*]}) and no apt-get; this script expects Debian/Ubuntu"
  sudo=()
  if ((EUID != 0)); then
    have sudo || die "missing packages (${missing[*]}); run as root or install sudo"
    sudo=(sudo)
  fi
  info "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  info "installed: ${missing[*]}"
else
  info "system packages: all ${#packages[@]} present"
fi

# --- toolchains that are not Debian packages -----------------------------------------------------
if ! have cargo; then
  if [[ -x $HOME/.cargo/bin/cargo ]]; then
    die "cargo is installed in ~/.cargo/bin but not on PATH; run: . \"\$HOME/.cargo/env\""
  fi
  die "cargo not found; install Rust with rustup (https://rustup.rs), then re-run"
fi
# java.specification.version is "1.8" for Java 8 and "17" for Java 17.
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
java_major=${java_major#1.}
if [[ $java_major =~ ^[0-9]+$ ]] && ((java_major < 17)); then
  die "java $java_major is first on PATH; the Kafka broker needs Java 17 or newer"
fi
info "toolchains: $(cargo --version), java ${java_major:-?}, $(mvn -v 2>/dev/null | head -n1 | sed 's/\x1b\[[0-9;]*m//g')"
