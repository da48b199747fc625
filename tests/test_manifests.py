"""The Kubernetes manifests, checked offline as a cluster would check them and more.

- Every raw YAML document and every rendered overlay (`kubectl kustomize`, when kubectl is
  on PATH) passes kubernetes-validate, strict, against Kubernetes 1.33.
- checkov (kubernetes framework) fails no check, except those skipped in the manifest with
  a written reason. checkov runs from a virtual environment of its own under .cache/ (in
  the project's it would break pytest), made on first use.
- The wiring: every Service selects a workload's pods on a port it listens on; every port,
  environment variable and probe path matches what the service itself reads and answers;
  the network policies let exactly the callers in.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import ValidationError
from support import manifests_with_secrets

from shopctl.images import PROJECT_ROOT, split_image
from shopctl.services import CONTRACT_BASE_PORT, SERVICES, Backend, Service
from shopkit.settings import ServiceSettings

MANIFESTS = PROJECT_ROOT / "manifests"
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = sorted(
    path.name
    for path in (MANIFESTS / "overlays").iterdir()
    if (path / "kustomization.yaml").is_file()
)
# checkov pulls in pins that break pytest, so it lives in a venv of its own, per version.
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = PROJECT_ROOT / ".cache" / f"checkov-{CHECKOV_VERSION}"
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


def validation_errors(documents: list[Document]) -> list[str]:
    """kubernetes-validate's first complaint about each document that has one."""
    errors = []
    for document in documents:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except ValidationError as error:
            where = "/".join(str(part) for part in error.absolute_path)
            errors.append(f"{name} at {where or '/'}: {error.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as error:
            errors.append(f"{name}: no schema ({error})")
    return errors


# -- rendering -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def manifests_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifests/ with each overlay's secrets file in place, as an operator has it."""
    return manifests_with_secrets(tmp_path_factory.mktemp("manifests") / "manifests")


@pytest.fixture(scope="session")
def rendered(manifests_copy: Path) -> dict[str, list[Document]]:
    """The base and every overlay as `kubectl kustomize` renders them."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not on PATH, so the overlays cannot be rendered (kubectl kustomize); "
            "the raw YAML is still validated"
        )
    documents = {}
    for name, folder in [("base", "base"), *((o, f"overlays/{o}") for o in OVERLAYS)]:
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


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_rendered_overlay_is_valid_kubernetes(
    overlay: str, rendered: dict[str, list[Document]]
) -> None:
    assert validation_errors(rendered[overlay]) == []


def test_validation_catches_a_misspelt_field() -> None:
    """Strict means strict: an unknown field is an error, not silently dropped."""
    (deployment,) = [doc for doc in raw_base() if doc["kind"] == "Deployment"][:1]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert "readinessProbes" in " ".join(validation_errors([deployment]))


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


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov, installed once into a virtual environment of its own under .cache/."""
    executable = CHECKOV_VENV / "bin" / "checkov"
    installed = CHECKOV_VENV / "installed"
    if not installed.exists():
        shutil.rmtree(CHECKOV_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True)
        result = subprocess.run(
            [
                str(CHECKOV_VENV / "bin" / "pip"),
                "install",
                "--quiet",
                f"checkov=={CHECKOV_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            pytest.fail(f"cannot install checkov into {CHECKOV_VENV}: {result.stderr[-2000:]}")
        installed.write_text(CHECKOV_VERSION)
    return executable


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
    return ["raw base", *OVERLAYS]


@pytest.fixture(params=wiring_sources())
def documents(request: pytest.FixtureRequest) -> list[Document]:
    """The raw base as committed, then each rendered overlay (those need kubectl)."""
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


def test_every_variable_set_is_one_the_service_reads(documents: list[Document]) -> None:
    deployments = by_kind(documents, "Deployment")
    for service in SERVICES:
        app = container(deployments[service.name])
        assert "envFrom" not in app, "each variable is named, so it can be checked"
        values = " ".join(str(entry.get("value", "")) for entry in app["env"])
        names = [entry["name"] for entry in app["env"]]
        # A variable the service does not read may only feed another one, as $(NAME).
        unread = {name for name in names if name not in variables_read(service)}
        assert {name for name in unread if f"$({name})" not in values} == set(), service.name
        missing = variables_required(service) - set(names)
        assert missing == set(), f"{service.name} would refuse to start without {missing}"
        assert len(names) == len(set(names)), service.name


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


def allowed_sources(policy: Document) -> set[str] | None:
    """The app names a policy lets in, or None when it lets anyone in."""
    sources: set[str] = set()
    for rule in policy["spec"].get("ingress", []):
        if "from" not in rule:
            return None
        for peer in rule["from"]:
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
            expected[service.name] = {s.name for s in SERVICES if service.name in s.calls}
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
