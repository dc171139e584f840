"""What scripts/check-deploy.sh checks in Python, after kustomize rendered the overlays and
kubernetes-validate checked the built-in kinds against their schemas.

It owns the checks no generic validator can make:
  * the prometheus-operator objects (ServiceMonitor, PrometheusRule) against the operator's
    CRD models (PyPI `cloudcoil-models-prometheus-operator`), rejecting unknown fields;
  * references between the rendered objects: volumes to ConfigMaps and their keys, Services
    and the PodDisruptionBudget to pods, ports by name, the ServiceMonitor to Services;
  * Waymark's own contract: the config file a container is given is the one mounted, its
    state directories are on the pod's volume, its HTTP ports are the containers' ports,
    static membership comes from the pod name, and waymark.yaml only uses keys that
    deploy/waymark.example.yaml documents;
  * that the copies under base/config are the same as deploy/journeys and deploy/templates;
  * that alerts and the Grafana dashboard only name metrics processor/src/telemetry.rs
    exports, and every dashboard panel has a query.

It writes the PrometheusRule's spec (waymark-rules.yaml) and the dashboard's queries as
recording rules (dashboard-queries.yaml) to --out for promtool, and summary.env for the
script's last line. It must not fetch anything or change files outside --out.
"""

import argparse
import filecmp
import json
import re
import sys
from pathlib import Path

import yaml
from cloudcoil.models.prometheus_operator import v1 as prom_v1

ERRORS: list[str] = []
ARGS = None  # the parsed command line, set by main()


def error(where, message: str) -> None:
    """Records a failure; `where` is a Path (shown relative to the repository) or a label."""
    ERRORS.append(f"{rel(where) if isinstance(where, Path) else where}: {message}")


def rel(path) -> str:
    """A path as the repository names it (messages stay short and clickable)."""
    try:
        return str(Path(path).resolve().relative_to(ARGS.repo.resolve()))
    except (ValueError, AttributeError):
        return str(path)


# --- generic helpers ---------------------------------------------------------------------------


def unknown_fields(given, kept, path=""):
    """Keys present in `given` but dropped by the model (pydantic ignores unknown fields)."""
    out = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}.{key}".lstrip("."))
            else:
                out += unknown_fields(value, kept[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept, strict=False)):
            out += unknown_fields(a, b, f"{path}[{i}]")
    return out


def key_paths(node, prefix=""):
    """Dotted paths of every mapping key; free-form maps (kafka.properties) are not entered."""
    paths = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            if path not in ("kafka.properties", "rocksdb"):
                paths |= key_paths(value, path)
    return paths


def port_of(addr: str) -> int:
    return int(str(addr).rsplit(":", 1)[1])


def under(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def matches(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
    return True


# --- the rendered objects ----------------------------------------------------------------------

ALLOWED_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "StatefulSet",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "PrometheusRule",
}
CRD_MODELS = {"ServiceMonitor": prom_v1.ServiceMonitor, "PrometheusRule": prom_v1.PrometheusRule}
# Per overlay: the namespace every object must be in, and the processor's replicas.
EXPECT = {
    "base": {"namespace": None, "replicas": 1},
    "dev": {"namespace": "waymark-dev", "replicas": 1},
    "production": {"namespace": "waymark", "replicas": 3},
}


class Rendered:
    """One rendered kustomization, indexed by kind."""

    def __init__(self, name: str, docs: list[dict]):
        self.name = name
        self.where = "base" if name == "base" else f"overlays/{name}"
        self.expect = EXPECT.get(name, {"namespace": None, "replicas": None})
        self.docs = docs
        self.by_kind: dict[str, list[dict]] = {}
        for doc in docs:
            self.by_kind.setdefault(doc.get("kind"), []).append(doc)
        self.configmaps = {d["metadata"]["name"]: d for d in self.kind("ConfigMap")}
        self.services = self.kind("Service")
        self.workloads = self.kind("StatefulSet")

    def kind(self, kind: str) -> list[dict]:
        return self.by_kind.get(kind, [])

    def pods_selected(self, selector: dict) -> list[dict]:
        """The StatefulSets whose pods `selector` (a LabelSelector) selects."""
        return [s for s in self.workloads if matches(selector, template_labels(s))]


def template_labels(sts: dict) -> dict:
    return sts["spec"]["template"]["metadata"]["labels"]


def component(obj: dict) -> str:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


def check_rendered(r: Rendered, example_keys: set[str]) -> dict:
    for kind in r.by_kind:
        if kind not in ALLOWED_KINDS:
            error(r.where, f"unexpected kind {kind} (add it to ALLOWED_KINDS if it is meant)")
    check_namespace(r)
    check_operator_objects(r)
    cfg_map = next((cm for n, cm in r.configmaps.items() if n.startswith("waymark-config")), None)
    if cfg_map is None:
        error(r.where, "no waymark-config ConfigMap")
        return {"objects": len(r.docs)}
    config = yaml.safe_load(cfg_map["data"]["waymark.yaml"])
    check_config_keys(r, config, example_keys)
    for sts in r.workloads:
        check_workload(r, sts, config)
    check_services(r)
    check_service_monitors(r)
    return {"objects": len(r.docs), "crds": sum(len(r.kind(k)) for k in CRD_MODELS)}


def check_namespace(r: Rendered) -> None:
    ns = r.expect["namespace"]
    if not ns:
        return
    names = [d["metadata"]["name"] for d in r.kind("Namespace")]
    if names != [ns]:
        error(r.where, f"expected one Namespace `{ns}`, found {names}")
    for doc in r.docs:
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != ns:
            error(r.where, f"{doc['kind']}/{doc['metadata']['name']} is not in namespace {ns}")


def check_operator_objects(r: Rendered) -> None:
    """ServiceMonitor and PrometheusRule against prometheus-operator's CRD models."""
    for kind, model in CRD_MODELS.items():
        for doc in r.kind(kind):
            label = f"{r.where}: {kind}/{doc['metadata']['name']}"
            try:
                obj = model.model_validate(doc)
            except Exception as e:  # pydantic.ValidationError, printed whole
                error(label, f"does not match the prometheus-operator CRD:\n{e}")
                continue
            kept = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
            for field in unknown_fields(doc, kept):
                error(label, f"unknown field `{field}`")


def check_config_keys(r: Rendered, config: dict, example_keys: set[str]) -> None:
    """waymark.yaml is parsed with deny_unknown_fields: use only documented keys."""
    example_sections = {k.split(".")[0] for k in example_keys}
    for key in sorted(key_paths(config) - example_keys):
        if key.split(".")[0] == "analytics" and "analytics" not in example_sections:
            continue  # `waymark analytics serve` is newer than the example config
        error(f"{r.where}: waymark.yaml", f"`{key}` is not a key of deploy/waymark.example.yaml")


class Pod:
    """The parts of a StatefulSet's pod the checks look at (one container)."""

    def __init__(self, sts: dict):
        spec = sts["spec"]
        self.spec = spec["template"]["spec"]
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        self.container = self.spec["containers"][0]
        self.ports = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        self.mounts = {m["mountPath"]: m for m in self.container.get("volumeMounts", [])}
        self.pvc_mounts = [p for p, m in self.mounts.items() if m["name"] in self.claims]
        self.args = self.container.get("args", [])
        self.env = {e["name"]: e for e in self.container.get("env", [])}

    def arg(self, flag: str):
        return self.args[self.args.index(flag) + 1] if flag in self.args[:-1] else None

    def configmap_at(self, path: str, prefix: str):
        """The ConfigMap volume mounted at `path` if its name starts with `prefix`."""
        mount = self.mounts.get(path)
        vol = self.volumes.get(mount["name"]) if mount else None
        name = (vol or {}).get("configMap", {}).get("name", "")
        return vol if name.startswith(prefix) else None


def check_workload(r: Rendered, sts: dict, config: dict) -> None:
    label = f"{r.where}: StatefulSet/{sts['metadata']['name']}"
    spec = sts["spec"]
    if not matches(spec["selector"], template_labels(sts)):
        error(label, "selector does not match its own pod template")
    if spec.get("serviceName") not in {s["metadata"]["name"] for s in r.services}:
        error(label, f"serviceName {spec.get('serviceName')} is not a Service here")
    if len(spec["template"]["spec"]["containers"]) != 1:
        error(label, "expected one container")
    pod = Pod(sts)
    check_pod_basics(r, label, pod)
    check_waymark_contract(r, label, sts, pod, config)


def check_pod_basics(r: Rendered, label: str, pod: Pod) -> None:
    """Volumes resolve, probes name ports, the pod is locked down."""
    if not pod.claims:
        error(label, "no volumeClaimTemplates: Waymark's state must survive restarts")
    for vol in pod.volumes.values():
        if "configMap" not in vol:
            continue
        cm = r.configmaps.get(vol["configMap"]["name"])
        if cm is None:
            error(label, f"volume {vol['name']}: no ConfigMap {vol['configMap']['name']}")
            continue
        for item in vol["configMap"].get("items", []):
            if item["key"] not in cm.get("data", {}):
                error(label, f"volume {vol['name']}: no key {item['key']} in its ConfigMap")
    for mount in pod.mounts.values():
        if mount["name"] not in pod.volumes and mount["name"] not in pod.claims:
            error(label, f"mount {mount['name']} has no volume")
    if not pod.spec.get("securityContext", {}).get("runAsNonRoot"):
        error(label, "pod must run as non-root")
    if not pod.container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        error(label, "container must have a read-only root filesystem")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = pod.container.get(probe, {}).get("httpGet")
        if not get:
            error(label, f"no {probe}")
        elif get["port"] not in pod.ports:
            error(label, f"{probe} port {get['port']} is not a container port")
    for env in pod.env.values():
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref and not ref.get("optional"):
            error(label, f"env {env['name']}: the Secret reference must be optional")


def check_waymark_contract(r: Rendered, label: str, sts: dict, pod: Pod, config: dict) -> None:
    """The command line, and the config file it points at, against the pod."""
    if pod.container.get("command") != ["/usr/local/bin/waymark"]:
        error(label, "command must be /usr/local/bin/waymark")
    if pod.arg("--log-format") != "json":
        error(label, "needs --log-format json")
    config_path = pod.arg("--config")
    mount = pod.mounts.get(config_path)
    if (
        not mount
        or mount.get("subPath") != "waymark.yaml"
        or pod.configmap_at(config_path, "waymark-config") is None
    ):
        error(label, f"--config {config_path} is not the waymark-config ConfigMap's waymark.yaml")
    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
    if grace <= config.get("shutdown-timeout-secs", 30):
        error(label, f"terminationGracePeriodSeconds {grace} must exceed shutdown-timeout-secs")

    command = pod.args[0] if pod.args else ""
    if command == "run":
        state, http = config.get("state-dir"), config.get("http-addr")
        check_processor(r, label, sts, pod, config)
    elif command == "sink":
        sinks = config.get("sinks", {})
        state, http = sinks.get("state-dir"), sinks.get("http-addr")
        check_sink_templates(label, pod, sinks, pod.args[1])
    elif command == "analytics":
        analytics = config.get("analytics", {})
        state, http = analytics.get("state-dir"), analytics.get("http-addr")
    else:
        error(label, f"unknown waymark command {command!r}")
        return
    if not state or not under(state, pod.pvc_mounts):
        error(label, f"state dir {state} is not on the pod's volume ({pod.pvc_mounts})")
    if not http or port_of(http) != pod.ports.get("http"):
        error(label, f"http-addr {http} is not container port `http` ({pod.ports.get('http')})")
    elif not str(http).startswith("0.0.0.0:"):
        error(label, f"http-addr {http} must listen on 0.0.0.0 for probes and scrapes")


def check_processor(r: Rendered, label: str, sts: dict, pod: Pod, config: dict) -> None:
    if pod.configmap_at(config.get("journeys", ""), "waymark-journeys") is None:
        error(label, f"journeys {config.get('journeys')} is not the waymark-journeys ConfigMap")
    for var in ("WAYMARK_GROUP_INSTANCE_ID", "WAYMARK_TRANSACTIONAL_ID"):
        field = pod.env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field != "metadata.name":
            error(label, f"{var} must come from the pod name (fieldRef metadata.name)")
    spec = sts["spec"]
    if spec.get("podManagementPolicy") != "Parallel":
        error(label, "podManagementPolicy must be Parallel")
    wanted = r.expect["replicas"]
    if wanted is not None and spec.get("replicas") != wanted:
        error(label, f"replicas {spec.get('replicas')}, expected {wanted}")
    if r.name == "production":
        terms = (
            pod.spec.get("affinity", {})
            .get("podAntiAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", [])
        )
        if not any(
            t.get("topologyKey") == "kubernetes.io/hostname"
            and matches(t["labelSelector"], template_labels(sts))
            for t in terms
        ):
            error(label, "production processors need anti-affinity across nodes")


def check_sink_templates(label: str, pod: Pod, sinks: dict, channel: str) -> None:
    """The email and SMS sinks see every template of deploy/templates/<channel>."""
    if channel not in ("email", "sms"):
        return
    tdir = sinks.get(channel, {}).get("templates", "")
    vol = pod.configmap_at(tdir, f"waymark-{channel}-templates")
    if vol is None:
        error(label, f"sinks.{channel}.templates {tdir} is not its templates ConfigMap")
        return
    originals = ARGS.repo / "deploy/templates" / channel
    wanted = {str(p.relative_to(originals)) for p in originals.rglob("*") if p.is_file()}
    got = {i["path"] for i in vol["configMap"].get("items", [])}
    for path in sorted(wanted - got):
        error(label, f"template file {path} of deploy/templates/{channel} is not mounted")
    for path in sorted(got - wanted):
        error(label, f"mounts {path}, which deploy/templates/{channel} does not have")


def check_services(r: Rendered) -> None:
    """Services and the PodDisruptionBudget select pods; target ports are named ports."""
    for svc in r.services:
        label = f"{r.where}: Service/{svc['metadata']['name']}"
        targets = r.pods_selected({"matchLabels": svc["spec"].get("selector", {})})
        if not targets:
            error(label, "selects no pod")
        for port in svc["spec"]["ports"]:
            for sts in targets:
                if port.get("targetPort") not in Pod(sts).ports:
                    error(label, f"targetPort {port.get('targetPort')} is no port of its pods")
    for pdb in r.kind("PodDisruptionBudget"):
        if not r.pods_selected(pdb["spec"]["selector"]):
            error(f"{r.where}: PodDisruptionBudget/{pdb['metadata']['name']}", "selects no pod")


def check_service_monitors(r: Rendered) -> None:
    """The ServiceMonitor finds every component's metrics Service, once, and its port."""
    for sm in r.kind("ServiceMonitor"):
        label = f"{r.where}: ServiceMonitor/{sm['metadata']['name']}"
        spec = sm["spec"]
        selected = [s for s in r.services if matches(spec["selector"], s["metadata"]["labels"])]
        components = [component(s) for s in selected]
        for wanted in ("processor", "analytics", "sink-email", "sink-sms", "sink-contact-center"):
            if components.count(wanted) != 1:
                error(label, f"selects {components.count(wanted)} Services of the {wanted}, not 1")
        for svc in selected:
            if spec.get("jobLabel") and spec["jobLabel"] not in svc["metadata"]["labels"]:
                error(label, f"Service {svc['metadata']['name']} lacks label {spec['jobLabel']}")
            port_names = {p.get("name") for p in svc["spec"]["ports"]}
            for ep in spec["endpoints"]:
                if ep.get("port") not in port_names:
                    error(label, f"Service {svc['metadata']['name']} has no port {ep.get('port')}")


# --- alerts ------------------------------------------------------------------------------------


def check_rules(rule: dict, out: Path) -> int:
    groups = rule["spec"]["groups"]
    count = 0
    for group in groups:
        for r in group["rules"]:
            name = r.get("alert") or r.get("record")
            where = f"PrometheusRule {group['name']}/{name}"
            if "alert" not in r:
                continue
            count += 1
            if "for" not in r:
                error(where, "needs `for:`")
            if r.get("labels", {}).get("severity") not in ("warning", "critical"):
                error(where, "needs labels.severity warning or critical")
            for key in ("summary", "description"):
                if not r.get("annotations", {}).get(key):
                    error(where, f"needs annotations.{key}")
    (out / "waymark-rules.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return count


# --- Grafana -----------------------------------------------------------------------------------


def check_dashboard(path: Path, out: Path) -> int:
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        error(path, f"not JSON: {e}")
        return 0
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        error(path, "needs a `datasource` variable of type datasource (prometheus)")
    ids = set()
    rules = []
    panels = 0
    stack = list(dash.get("panels", []))
    while stack:
        panel = stack.pop(0)
        stack += panel.get("panels", [])
        where = f"{path.name}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            error(where, "duplicate panel id")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        panels += 1
        pos = panel.get("gridPos", {})
        if pos.get("x", 0) + pos.get("w", 0) > 24:
            error(where, "wider than the grid")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            error(where, "datasource must be ${datasource}")
        targets = panel.get("targets") or []
        if not targets:
            error(where, "has no query")
        for t in targets:
            expr = (t.get("expr") or "").strip()
            if not expr:
                error(where, f"query {t.get('refId')} is empty")
                continue
            if t.get("datasource", {}).get("uid") != "${datasource}":
                error(where, f"query {t.get('refId')} must use ${{datasource}}")
            promql = expr.replace("$__rate_interval", "5m").replace("$namespace", "waymark")
            if "$" in promql:
                error(where, f"query {t.get('refId')} uses an unknown variable: {expr}")
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}:{t.get('refId')}", "expr": promql}
            )
    (out / "dashboard-queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, sort_keys=False)
    )
    return panels


# --- metric names and copies -------------------------------------------------------------------


def exported_metrics(repo: Path) -> set[str]:
    text = (repo / "processor/src/telemetry.rs").read_text()
    return set(re.findall(r'pub const [A-Z0-9_]+: &str = "(waymark_[a-z0-9_]+)";', text))


def check_metric_names(files: list[Path], exported: set[str]) -> int:
    seen = 0
    for path in files:
        for match in re.finditer(r"(?<![A-Za-z0-9_-])waymark_[a-z0-9_]+", path.read_text()):
            name = match.group(0)
            base = next(
                (
                    name[: -len(s)]
                    for s in ("_bucket", "_sum", "_count")
                    if name.endswith(s) and name[: -len(s)] in exported
                ),
                name,
            )
            if base not in exported:
                error(path, f"`{name}` is not a metric Waymark exports (telemetry.rs)")
            seen += 1
    return seen


def check_copies(repo: Path, k8s: Path) -> None:
    """base/config holds copies (kustomize reads no file outside its directory): the reference
    journey and every template must equal their originals. Journeys of a deployment's own
    may be added beside the reference journey."""
    journeys, copy = repo / "deploy/journeys", k8s / "base/config/journeys"
    for path in sorted(copy.glob("*.yaml")):
        original = journeys / path.name
        if original.exists() and not filecmp.cmp(original, path, shallow=False):
            error(path, f"differs from {rel(original)}; copy it again")
    if not (copy / "b2b-onboarding.yaml").exists():
        error(copy, "the reference journey b2b-onboarding.yaml is missing")
    templates, copy = repo / "deploy/templates", k8s / "base/config/templates"
    src = {p.relative_to(templates) for p in templates.rglob("*") if p.is_file()}
    dst = {p.relative_to(copy) for p in copy.rglob("*") if p.is_file()}
    for r in sorted(src - dst):
        error(
            copy / r,
            f"missing; cp {rel(templates / r)} {rel(copy / r)} and add it to "
            "base/kustomization.yaml and base/sinks.yaml (items)",
        )
    for r in sorted(dst - src):
        error(copy / r, f"has no original under {rel(templates)}")
    for r in sorted(src & dst):
        if not filecmp.cmp(templates / r, copy / r, shallow=False):
            error(copy / r, f"differs from {rel(templates / r)}; copy it again")


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("rendered", nargs="+", help="NAME=FILE of a rendered kustomization")
    ARGS = parser.parse_args()
    k8s = ARGS.repo / "deploy/k8s"
    example_keys = key_paths(
        yaml.safe_load((ARGS.repo / "deploy/waymark.example.yaml").read_text())
    )

    objects = crds = 0
    production_rule = None
    for item in ARGS.rendered:
        name, file = item.split("=", 1)
        docs = [d for d in yaml.safe_load_all(Path(file).read_text()) if d]
        stats = check_rendered(Rendered(name, docs), example_keys)
        objects += stats["objects"]
        crds += stats.get("crds", 0)
        if name == "production":
            production_rule = next((d for d in docs if d["kind"] == "PrometheusRule"), None)
    if production_rule is None:
        error("overlays/production", "no PrometheusRule rendered")
        alerts = 0
    else:
        alerts = check_rules(production_rule, ARGS.out)

    panels = check_dashboard(k8s / "grafana/waymark-dashboard.json", ARGS.out)
    check_copies(ARGS.repo, k8s)
    exported = exported_metrics(ARGS.repo)
    # As processor/src/telemetry.rs's own test does for all of deploy/.
    monitored = sorted(p for p in k8s.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    references = check_metric_names(monitored, exported)
    tests = yaml.safe_load((k8s / "tests/alerts.test.yaml").read_text())
    tested = {
        a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"] if a["exp_alerts"]
    }
    for wanted in ("WaymarkDeadLetters", "WaymarkTransactionAborts"):
        if wanted not in tested:
            error("tests/alerts.test.yaml", f"no test where {wanted} fires")

    (ARGS.out / "summary.env").write_text(
        f"OBJECTS={objects}\nCRDS={crds}\nALERTS={alerts}\nALERTS_TESTED={len(tested)}\n"
        f"PANELS={panels}\nMETRIC_REFERENCES={references}\n"
    )
    for e in ERRORS:
        print(f"check-deploy: error: {e}", file=sys.stderr)
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
