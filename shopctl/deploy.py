"""`shopctl deploy`: apply manifests/ to an environment's Kubernetes cluster, and watch."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from shopctl import processes
from shopctl.console import Consoles, failures_reported, get_consoles, progress_bar
from shopctl.environments import LOCAL, Environment, load_environments, resolve_environment
from shopctl.errors import ShopctlError
from shopctl.images import image_name, project_dir, split_image, valid_tag
from shopctl.options import DataDir
from shopctl.services import SERVICES
from shopctl.status import status

FIELD_MANAGER = "shopctl"
# The environment (and overlay) for a Kubernetes cluster on this machine, as shopctl.toml
# names it: `local` is the shop `shopctl up` runs, with no cluster.
LOCAL_CLUSTER = "local-cluster"
RENDER_TIMEOUT = 120.0
CLUSTER_TIMEOUT = 300.0
# What `kubectl rollout status` can wait for.
ROLLED_OUT_KINDS = ("Deployment", "StatefulSet")

Document = dict[str, Any]


def deploy(
    ctx: typer.Context,
    data_dir: DataDir,
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            "-e",
            help="The environment whose cluster to deploy to, by name from shopctl.toml "
            "(required; see `shopctl env list`). Example: --env dev",
            envvar="SHOP_ENV",
            show_default=False,
        ),
    ] = None,
    # Refused with one line rather than unknown: every other command takes --url. No
    # envvar, so a SHOP_URL set for the other commands does not stop a deploy.
    url: Annotated[str | None, typer.Option("--url", hidden=True)] = None,
    image_tag: Annotated[
        str | None,
        typer.Option(
            help="Run the shop's images with this tag (default: the overlay's). "
            "Example: --image-tag 0.1.0-c56a1e9",
            envvar="SHOP_IMAGE_TAG",
            callback=valid_tag,
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the manifests that would be applied, and apply nothing. Needs no "
            "secrets file: a missing one is filled with placeholders, with a warning.",
        ),
    ] = False,
    manifests: Annotated[
        Path | None,
        typer.Option(
            help="The kustomize tree: base/ and overlays/NAME/ (default: manifests/ beside "
            "the project's shopctl.toml, found from here). Example: --manifests ./manifests",
            envvar="SHOP_MANIFESTS",
            file_okay=False,
            resolve_path=True,
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        int,
        typer.Option(
            help="Seconds each Deployment or StatefulSet may take to roll out. "
            "Example: --timeout 600",
            min=1,
        ),
    ] = 300,
) -> None:
    """Deploy the shop to an environment's Kubernetes cluster.

    Renders the environment's overlay (`kubectl kustomize`), shows what would change,
    applies it server-side to the environment's kube context and namespace, waits for
    every rollout, then shows `shopctl status --env NAME`. Exits 1 if kubectl is missing,
    the cluster does not answer, a rollout fails or the shop is not ready after it.

    Examples:

    * `shopctl deploy --env dev --dry-run`
    * `shopctl deploy --env dev --image-tag 0.1.0-c56a1e9`
    * `shopctl deploy --env local-cluster` (kind, minikube or k3d on this machine)
    """
    consoles = get_consoles(ctx)
    with failures_reported(consoles):
        if url is not None:
            raise ShopctlError(
                "deploy takes --env NAME, not --url: a URL names a gateway, not a cluster "
                "(check a gateway with `shopctl status --url URL`)"
            )
        environment = deploy_target(env, data_dir)
        context = None if dry_run else cluster_context(environment)
        manifests = manifests or project_dir() / "manifests"
        overlay = overlay_dir(manifests, environment)
        kubectl = find_kubectl()
        secrets = check_secrets_files(overlay, complete=not dry_run)
        with placeholder_secrets(manifests, overlay, secrets.missing) as rendered_overlay:
            documents = render(kubectl, rendered_overlay)
        documents = set_images(documents, environment.registry, image_tag)
        documents = set_namespace(documents, environment.namespace)
        text = to_yaml(documents)
        if dry_run:
            shown = to_yaml(mask_secrets(documents))
            consoles.out.print(shown, markup=False, highlight=False, soft_wrap=True, end="")
            consoles.err.print(
                f"{len(documents)} objects for {environment.name} (overlay "
                f"{environment.overlay}, namespace {environment.namespace}), Secret values "
                "masked; nothing applied.",
                markup=False,
            )
            for warning in secrets.warnings:
                consoles.err.print(f"[yellow]Warning:[/] {escape(warning)}", soft_wrap=True)
            return
        assert context is not None
        cluster = Cluster(kubectl, context, environment.namespace)
        cluster.check_reachable()
        show_changes(documents, cluster.diff(text), cluster, consoles)
        cluster.apply(text)
        consoles.say(f"Applied {len(documents)} objects to {cluster}.")
        wait_for_rollouts(cluster, documents, timeout, consoles)
    consoles.say(f"Deployed {environment.name}. Its gateway says:")
    status(ctx, data_dir=data_dir, env=environment.name, url=None)


def deploy_target(env_name: str | None, data_dir: Path) -> Environment:
    """The environment to deploy to, named: never `local` by default, which is the shop
    `shopctl up` runs and has no cluster."""
    environments = load_environments(data_dir)
    deployable = ", ".join(name for name, found in environments.items() if found.kube_context)
    if env_name is None:
        raise ShopctlError(
            f"deploy needs --env NAME, the environment whose cluster to deploy to: "
            f"{deployable or 'none has a kube_context yet'} (see `shopctl env list`)"
        )
    environment = resolve_environment(env_name, None, data_dir)
    if environment.is_local and environment.kube_context is None:
        raise ShopctlError(
            f"{LOCAL!r} is the shop `shopctl up` runs on this machine, not a cluster: for a "
            f"cluster on this machine (kind, minikube, k3d) deploy --env {LOCAL_CLUSTER}; "
            f"deployable: {deployable or 'none'}"
        )
    return environment


def overlay_dir(manifests: Path, environment: Environment) -> Path:
    name = environment.overlay
    overlay = manifests / "overlays" / (name or "")
    if name is None or not (overlay / "kustomization.yaml").is_file():
        found = (manifests / "overlays").glob("*/kustomization.yaml")
        there = ", ".join(sorted(path.parent.name for path in found)) or "none"
        raise ShopctlError(
            f"no overlay {name!r} in {manifests / 'overlays'} (there: {there}); "
            f"set overlay in [env.{environment.name}] of shopctl.toml"
        )
    return overlay


def find_kubectl() -> str:
    kubectl = processes.find_program("kubectl")
    if kubectl is None:
        raise ShopctlError(
            "kubectl is not on PATH: install it (1.27 or later; it renders with its own kustomize)"
        )
    return kubectl


def cluster_context(environment: Environment) -> str:
    """The environment's kube context: never whichever one happens to be current."""
    if environment.kube_context is None:
        raise ShopctlError(
            f"environment {environment.name!r} names no kube_context: add "
            f'kube_context = "..." to [env.{environment.name}] in shopctl.toml '
            "(see `shopctl env list`)"
        )
    return environment.kube_context


@dataclass(frozen=True)
class SecretsFiles:
    """What check_secrets_files found: files a dry run renders with placeholders instead,
    and sentences to warn with."""

    missing: list[Path]
    warnings: list[str]


def check_secrets_files(overlay: Path, *, complete: bool) -> SecretsFiles:
    """The files the overlay's secretGenerator reads exist (they are never committed) and,
    before a real deploy, set every key they list. A dry run (`complete=False`) needs no
    secret value: a missing file or an empty key is a warning naming the file to fill."""
    missing: list[Path] = []
    warnings: list[str] = []
    file = overlay / "kustomization.yaml"
    try:
        kustomization = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ShopctlError(f"cannot read {file}: {error}") from None
    if not isinstance(kustomization, dict):
        raise ShopctlError(f"{file} is not a kustomization (a YAML mapping)")
    for generator in kustomization.get("secretGenerator", []):
        for source in [*generator.get("envs", []), *generator.get("files", [])]:
            # A `files` entry may be `key=path`.
            path = overlay / (source.partition("=")[2] if "=" in source else source)
            if not path.is_file():
                example = path.with_name(path.name + ".example")
                hint = "create it"
                if example.is_file():
                    hint = f"copy {example.name} beside it and fill it in"
                if complete:
                    raise ShopctlError(f"{path} is missing: {hint} (it is never committed)")
                missing.append(path)
                warnings.append(
                    f"{path} is missing, so its Secret was rendered with placeholder values; "
                    f"before a real deploy, {hint}"
                )
                continue
            if source in generator.get("envs", []):
                empty = [key for key, value in env_file(path).items() if not value]
                if empty and complete:
                    raise ShopctlError(f"{path}: fill in {', '.join(empty)} before deploying")
                if empty:
                    warnings.append(
                        f"{path}: {', '.join(empty)} empty; a real deploy refuses until they "
                        "are filled in"
                    )
    return SecretsFiles(missing, warnings)


@contextmanager
def placeholder_secrets(manifests: Path, overlay: Path, missing: list[Path]) -> Iterator[Path]:
    """The overlay to render: itself, or, when secrets files are missing (a dry run from a
    fresh clone), the same overlay in a private temporary copy of the tree in which each
    missing file is made from its `.example` with every value a placeholder. The dry run
    masks Secret values anyway; only the keys show."""
    if not missing:
        yield overlay
        return
    with tempfile.TemporaryDirectory(prefix="shopctl-dry-run-") as temporary:
        copy = Path(temporary) / "manifests"
        shutil.copytree(manifests, copy)
        for path in missing:
            try:
                stand_in = copy / path.relative_to(manifests)
            except ValueError:
                raise ShopctlError(f"{path} is missing (and outside {manifests})") from None
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text(placeholder_text(path))
        yield copy / overlay.relative_to(manifests)


def placeholder_text(path: Path) -> str:
    """What stands in for a missing secrets file: its example's keys, each set to
    `placeholder`, or `placeholder` alone when there is no example."""
    example = path.with_name(path.name + ".example")
    if not example.is_file():
        return "placeholder\n"
    return "".join(f"{key}=placeholder\n" for key in env_file(example))


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as kustomize's secretGenerator reads them (# starts a comment)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def render(kubectl: str, overlay: Path) -> list[Document]:
    result = _run([kubectl, "kustomize", str(overlay)], timeout=RENDER_TIMEOUT)
    if result.returncode != 0:
        raise ShopctlError(
            f"kubectl kustomize {overlay} failed: {processes.last_line(result.stderr)}"
        )
    try:
        documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    except yaml.YAMLError as error:
        raise ShopctlError(f"kubectl kustomize {overlay} printed no YAML: {error}") from None
    if not documents:
        raise ShopctlError(f"kubectl kustomize {overlay} rendered nothing")
    return documents


def set_images(documents: list[Document], registry: str | None, tag: str | None) -> list[Document]:
    """Point the shop's own images (`.../shop-<service>`) at `registry` and `tag`, each
    only when given; every other image (the datastores') is left as the overlay has it."""
    ours = {f"shop-{service.name}": service.name for service in SERVICES}
    for document in documents:
        pod = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            name, current_tag = split_image(container["image"])
            service = ours.get(name.rpartition("/")[2])
            if service is None:
                continue
            new_name = image_name(registry, service) if registry else name
            new_tag = tag or current_tag
            container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
    return documents


def set_namespace(documents: list[Document], namespace: str) -> list[Document]:
    """Move every namespaced object (and the Namespace itself) to the environment's."""
    for document in documents:
        metadata = document.setdefault("metadata", {})
        if document.get("kind") == "Namespace":
            metadata["name"] = namespace
        elif "namespace" in metadata:
            metadata["namespace"] = namespace
    return documents


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the init scripts) as `|` blocks, as they were written."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = (
        "|"
        if "\n" in value and not any(line.endswith(" ") for line in value.splitlines())
        else None
    )
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def to_yaml(documents: list[Document]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)


def mask_secrets(documents: list[Document]) -> list[Document]:
    """Copies of the documents with every Secret value replaced: a dry run's output may be
    pasted into a ticket or a log."""
    masked = []
    for document in documents:
        if document.get("kind") == "Secret":
            document = {**document}
            for field in ("data", "stringData"):
                if field in document:
                    document[field] = dict.fromkeys(document[field], "(masked)")
        masked.append(document)
    return masked


def _run(
    command: Sequence[str], *, timeout: float, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return processes.run_program(command, input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ShopctlError(f"{' '.join(command[1:3])} took longer than {timeout:.0f} s") from None
    except OSError as error:
        raise ShopctlError(f"cannot run {command[0]}: {error.strerror}") from None


@dataclass(frozen=True)
class Cluster:
    """kubectl, always aimed at one context and namespace."""

    kubectl: str
    context: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.context}/{self.namespace}"

    def run(
        self, *args: str, input: str | None = None, timeout: float = CLUSTER_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        command = [self.kubectl, "--context", self.context, "--namespace", self.namespace]
        return _run([*command, *args], input=input, timeout=timeout)

    def check_reachable(self) -> None:
        result = self.run("version", "--output=json", "--request-timeout=20s", timeout=60)
        if result.returncode != 0:
            reason = processes.last_line(result.stderr) or f"kubectl exit code {result.returncode}"
            raise ShopctlError(f"cannot reach the cluster of context {self.context}: {reason}")

    def diff(self, manifests: str) -> dict[str, str] | None:
        """`kubectl diff` as {diff name: "new" | "changed"}; None when the namespace does not
        exist yet (a first deploy: everything is new)."""
        result = self.run(
            "diff",
            "--server-side",
            f"--field-manager={FIELD_MANAGER}",
            "-f",
            "-",
            input=manifests,
        )
        # 0: no differences; 1: differences (or, from some kubectl versions, an error).
        if result.returncode == 0 or (result.returncode == 1 and result.stdout.strip()):
            return parse_diff(result.stdout)
        if f'namespaces "{self.namespace}" not found' in result.stderr:
            return None
        raise ShopctlError(
            f"kubectl diff failed: {processes.last_line(result.stderr or result.stdout)}"
        )

    def apply(self, manifests: str) -> None:
        result = self.run(
            "apply",
            "--server-side",
            f"--field-manager={FIELD_MANAGER}",
            "-f",
            "-",
            input=manifests,
        )
        if result.returncode != 0:
            raise ShopctlError(f"kubectl apply failed: {processes.last_line(result.stderr)}")

    def rollout_status(self, workload: str, timeout: int) -> None:
        result = self.run(
            "rollout", "status", workload, f"--timeout={timeout}s", timeout=timeout + 60
        )
        if result.returncode != 0:
            reason = processes.last_line(result.stderr or result.stdout) or "no reason given"
            raise ShopctlError(
                f"{workload} did not roll out ({reason}); see kubectl --context "
                f"{self.context} --namespace {self.namespace} describe {workload}"
            )


def parse_diff(output: str) -> dict[str, str]:
    """kubectl diff's unified diff as {object: "new" | "changed"}. Each object's section
    starts `diff -u -N <live file> <merged file>`, both named
    `<group.>version.Kind.namespace.name`; a new object's hunk starts `@@ -0,0 `."""
    changes: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("diff "):
            current = Path(line.split()[-1]).name
            changes[current] = "changed"
        elif current and line.startswith("@@ -0,0 "):
            changes[current] = "new"
    return changes


def diff_name(document: Document) -> str:
    """The name kubectl diff gives an object's files: `<group.>version.Kind.namespace.name`."""
    group, _, version = document["apiVersion"].rpartition("/")
    metadata = document["metadata"]
    prefix = f"{group}." if group else ""
    return (
        f"{prefix}{version}.{document['kind']}.{metadata.get('namespace', '')}.{metadata['name']}"
    )


def show_changes(
    documents: list[Document], changes: dict[str, str] | None, cluster: Cluster, consoles: Consoles
) -> None:
    """What applying will do: a table of the new and changed objects, then the counts."""
    labels = {diff_name(doc): f"{doc['kind']}/{doc['metadata']['name']}" for doc in documents}
    if changes is None:  # the namespace is not there yet
        changes = dict.fromkeys(labels, "new")
    if changes:
        table = Table(title=f"Changes to {cluster}", title_justify="left")
        table.add_column("object", overflow="fold")
        table.add_column("change")
        for name, change in changes.items():
            style = "green" if change == "new" else "yellow"
            table.add_row(labels.get(name, name), f"[{style}]{change}[/]")
        consoles.out.print(table)
    new = sum(1 for change in changes.values() if change == "new")
    unchanged = len(documents) - len(changes.keys() & labels.keys())
    consoles.say(f"{new} new, {len(changes) - new} changed, {unchanged} unchanged.")


def wait_for_rollouts(
    cluster: Cluster, documents: list[Document], timeout: int, consoles: Consoles
) -> None:
    """`kubectl rollout status` for each Deployment and StatefulSet, in turn (they roll out
    at once in the cluster; this only watches), with a progress display."""
    workloads = [
        f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        for doc in documents
        if doc["kind"] in ROLLED_OUT_KINDS
    ]
    with progress_bar(consoles.out) as progress:
        task = progress.add_task("Rolling out", total=len(workloads))
        for workload in workloads:
            progress.update(task, description=f"Rolling out {workload}")
            cluster.rollout_status(workload, timeout)
            progress.advance(task)
        progress.update(task, description="Rolled out")
