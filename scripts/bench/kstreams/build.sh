#!/usr/bin/env bash
# Builds the Kafka Streams baseline (once; again only when its sources changed) and prints the
# classpath to run it with:
#   java -cp "$(bash scripts/bench/kstreams/build.sh)" io.waymark.bench.kstreams.OnboardingApp --help
# Maven's local repository and the build output live under $WAYMARK_CACHE (default
# ~/.cache/waymark), outside the work tree: m2/ and kstreams/target/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${WAYMARK_CACHE:-$HOME/.cache/waymark}
out=$cache/kstreams/target
jar=$out/kstreams-onboarding.jar
stamp=$out/.sources.sha256

have() { command -v "$1" >/dev/null 2>&1; }
have mvn || { echo "kstreams: mvn not found; run scripts/setup.sh (Debian: apt-get install maven)" >&2; exit 1; }
have java || { echo "kstreams: java not found; run scripts/setup.sh (Debian: apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }

sources=$(cd "$here" && find pom.xml src -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [[ ! -f $jar || ! -f $stamp || $(<"$stamp") != "$sources" ]]; then
  mkdir -p "$out"
  rm -rf "$out/lib" # copy-dependencies only adds: drop jars of earlier builds
  echo "kstreams: building the Kafka Streams baseline into $out ..." >&2
  if ! mvn -B -q -f "$here/pom.xml" -Dmaven.repo.local="$cache/m2" -Dkstreams.build.dir="$out" \
    package >"$out/mvn.log" 2>&1; then
    tail -n 40 "$out/mvn.log" >&2
    echo "kstreams: the build failed (above; full log $out/mvn.log)" >&2
    exit 1
  fi
  printf '%s\n' "$sources" >"$stamp"
fi
printf '%s\n' "$jar:$out/lib/*"
