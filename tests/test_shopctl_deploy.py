"""`shopctl deploy` against a stand-in kubectl on PATH: it records every call (and what was
piped to it), renders with the real `kubectl kustomize` where there is one, and answers
the cluster's part (version, diff, apply, rollout status) from a script. The status at the
end comes from a real gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer
from support import REPO, manifests_with_secrets

from shopctl.images import split_image
from shopctl.services import SERVICES
from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app

REAL_KUBECTL = shutil.which("kubectl")
needs_kustomize = pytest.mark.skipif(
    REAL_KUBECTL is None,
    reason="kubectl is not on PATH: the stand-in has no real `kubectl kustomize` to render with",
)
UNREACHABLE = "Unable to connect to the server: dial tcp 10.9.8.7:6443: i/o timeout"
ROLLOUT_FAILED = 'error: deployment "order" exceeded its progress deadline'

# The stand-in kubectl. kubectl.json beside it says how the cluster behaves.
FAKE_KUBECTL = """
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "kubectl.json")) as file:
    cluster = json.load(file)
args = sys.argv[1:]
command = next(a for a in args if a in ("kustomize", "version", "diff", "apply", "rollout"))
namespace = args[args.index("--namespace") + 1] if "--namespace" in args else ""
stdin = sys.stdin.read() if args[-2:] == ["-f", "-"] else ""
with open(os.path.join(here, "calls.jsonl"), "a") as calls:
    calls.write(json.dumps({"args": args, "stdin": stdin}) + "\\n")

if command == "kustomize":
    if not cluster["real"]:
        sys.exit(print("error: no real kubectl to render with", file=sys.stderr) or 1)
    os.execv(cluster["real"], [cluster["real"], *args])
if command == "version":
    if not cluster["reachable"]:
        sys.exit(print(cluster["unreachable"], file=sys.stderr) or 1)
    print(json.dumps({"serverVersion": {"gitVersion": "v1.33.1"}}))
elif command == "diff":
    if cluster["diff"] == "no-namespace":
        message = f'Error from server (NotFound): namespaces "{namespace}" not found'
        sys.exit(print(message, file=sys.stderr) or 1)
    for kind, name, hunk in [
        ("apps.v1.Deployment", "gateway", "@@ -150,7 +150,7 @@"),
        ("v1.ConfigMap", "mongodb-init", "@@ -0,0 +1,20 @@"),
    ]:
        live = f"/tmp/LIVE-1/{kind}.{namespace}.{name}"
        merged = f"/tmp/MERGED-1/{kind}.{namespace}.{name}"
        print(f"diff -u -N {live} {merged}")
        print(f"--- {live}\\t2026-11-25 10:00:00")
        print(f"+++ {merged}\\t2026-11-25 10:00:00")
        print(hunk)
        print("+  changed: true")
    sys.exit(1)
elif command == "apply":
    print("everything serverside-applied")
elif command == "rollout":
    workload = args[args.index("status") + 1]
    if workload == cluster["fail_rollout"]:
        sys.exit(print(cluster["rollout_failed"], file=sys.stderr) or 1)
    print(f"{workload} successfully rolled out")
"""


def fake_kubectl(bin_dir: Path, **behaviour: Any) -> Path:
    """The stand-in kubectl in `bin_dir`; `behaviour` overrides a cluster that answers."""
    bin_dir.mkdir(exist_ok=True)
    cluster = {
        "real": REAL_KUBECTL,
        "reachable": True,
        "unreachable": UNREACHABLE,
        "diff": "changes",
        "fail_rollout": None,
        "rollout_failed": ROLLOUT_FAILED,
        **behaviour,
    }
    (bin_dir / "kubectl.json").write_text(json.dumps(cluster))
    script = bin_dir / "kubectl"
    script.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    script.chmod(0o755)
    return script


def calls(bin_dir: Path) -> list[dict[str, Any]]:
    log = bin_dir / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def commands(bin_dir: Path) -> list[str]:
    """Each call as its kubectl command word (`kustomize`, `diff`, ...)."""
    words = ("kustomize", "version", "diff", "apply", "rollout")
    return [next(arg for arg in call["args"] if arg in words) for call in calls(bin_dir)]


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    """A manifests/ with its secrets files and a stand-in kubectl, for deploys to staging."""
    # `staging`: an environment (in the user's shopctl.toml) on the kube context kind-shop.
    manifests = manifests_with_secrets(tmp_path / "manifests")
    bin_dir = tmp_path / "bin"
    fake_kubectl(bin_dir)
    return {"tmp": tmp_path, "manifests": manifests, "bin": bin_dir}


def write_environment(tmp_path: Path, url: str, **keys: str) -> Path:
    entries = {
        "url": url,
        "kube_context": "kind-shop",
        "namespace": "shop-staging",
        "overlay": "dev",
        "registry": "reg.test/shop",
        **keys,
    }
    config = tmp_path / "shopctl.toml"
    config.write_text(
        "[env.staging]\n"
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in entries.items())
    )
    return config


def shopctl_env(tmp_path: Path, bin_dir: Path) -> dict[str, str]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SHOP_") and key != "PATH"
    }
    return {
        **inherited,
        "PATH": str(bin_dir),
        "COLUMNS": "200",
        "SHOP_CONFIG": str(tmp_path / "shopctl.toml"),
        "SHOP_DATA_DIR": str(tmp_path / "data"),
    }


def deploy_args(manifests: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shopctl",
        "deploy",
        "--env",
        "staging",
        "--manifests",
        str(manifests),
        *args,
    ]


def shopctl_deploy(setup: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        deploy_args(setup["manifests"], *args),
        capture_output=True,
        text=True,
        env=shopctl_env(setup["tmp"], setup["bin"]),
        cwd=setup["tmp"],
        timeout=120,
    )


@pytest.fixture
async def gateway(aiohttp_server: Any) -> TestServer:
    """A real gateway with no backends configured: its /ready answers 200."""
    settings = GatewaySettings.from_env({"HOST": "127.0.0.1", "JWT_SECRET": "g" * 40})
    return await aiohttp_server(create_gateway_app(settings))


@needs_kustomize
async def test_deploy_renders_diffs_applies_waits_and_shows_the_status(
    setup: dict[str, Any], gateway: TestServer
) -> None:
    write_environment(setup["tmp"], str(gateway.make_url("")).rstrip("/"))
    process = await asyncio.create_subprocess_exec(
        *deploy_args(setup["manifests"], "--image-tag", "1.2.3-abc1234", "--timeout", "90"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=shopctl_env(setup["tmp"], setup["bin"]),
        cwd=setup["tmp"],
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    output = stdout.decode() + stderr.decode()
    assert process.returncode == 0, output

    recorded = calls(setup["bin"])
    workloads = [f"deployment/{s.name}" for s in sorted(SERVICES, key=lambda s: s.name)]
    workloads += ["statefulset/mongodb", "statefulset/postgres", "statefulset/redis"]
    assert commands(setup["bin"]) == ["kustomize", "version", "diff", "apply"] + ["rollout"] * 8
    assert recorded[0]["args"] == ["kustomize", str(setup["manifests"] / "overlays" / "dev")]
    for call in recorded[1:]:
        assert call["args"][:4] == ["--context", "kind-shop", "--namespace", "shop-staging"]
    for call in recorded[2:4]:
        assert {"--server-side", "--field-manager=shopctl"} <= set(call["args"])
    rollouts = [call["args"][6:] for call in recorded[4:]]
    assert sorted(rollouts) == sorted([w, "--timeout=90s"] for w in workloads)

    # What was applied: the diffed manifests, our images from the environment's registry
    # with the tag asked for, everything in the environment's namespace.
    applied = [doc for doc in yaml.safe_load_all(recorded[3]["stdin"]) if doc]
    assert recorded[2]["stdin"] == recorded[3]["stdin"]
    images = {
        container["image"]
        for doc in applied
        if doc["kind"] in ("Deployment", "StatefulSet")
        for container in doc["spec"]["template"]["spec"]["containers"]
    }
    ours = {f"reg.test/shop/shop-{service.name}:1.2.3-abc1234" for service in SERVICES}
    assert ours <= images
    assert {image.partition(":")[0] for image in images - ours} == {"mongo", "postgres", "redis"}
    namespaces = {doc["metadata"].get("namespace") for doc in applied if doc["kind"] != "Namespace"}
    assert namespaces == {"shop-staging"}
    assert [doc["metadata"]["name"] for doc in applied if doc["kind"] == "Namespace"] == [
        "shop-staging"
    ]

    # The diff summary, the rollouts, then `shopctl status --env staging`.
    assert "Changes to kind-shop/shop-staging" in output
    assert "Deployment/gateway" in output and "changed" in output
    assert "ConfigMap/mongodb-init" in output and "new" in output
    assert f"1 new, 1 changed, {len(applied) - 2} unchanged." in output
    assert "Rolled out" in output and "8/8" in output
    assert f"Applied {len(applied)} objects to kind-shop/shop-staging." in output
    assert f"Gateway {str(gateway.make_url('')).rstrip('/')}: ready" in output


@needs_kustomize
def test_a_dry_run_prints_the_manifests_and_asks_nothing_of_the_cluster(
    setup: dict[str, Any],
) -> None:
    write_environment(setup["tmp"], "https://shop.staging.test", kube_context="nowhere")
    result = shopctl_deploy(setup, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    kinds = {doc["kind"] for doc in documents}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "NetworkPolicy"} <= kinds
    assert "nothing applied" in result.stderr
    assert commands(setup["bin"]) == ["kustomize"]
    # The output is for reading (and pasting): no secret value is in it.
    (secret,) = [doc for doc in documents if doc["kind"] == "Secret"]
    assert set(secret["data"].values()) == {"(masked)"}
    secrets = setup["manifests"] / "overlays" / "dev" / "secrets" / "shop.env"
    jwt_secret = next(line for line in secrets.read_text().splitlines() if "JWT_SECRET=" in line)
    assert base64.b64encode(jwt_secret.partition("=")[2].encode()).decode() not in result.stdout


@needs_kustomize
def test_a_first_deploy_counts_everything_as_new(setup: dict[str, Any], tmp_path: Path) -> None:
    fake_kubectl(setup["bin"], diff="no-namespace")
    write_environment(setup["tmp"], "http://127.0.0.1:1")
    result = shopctl_deploy(setup)
    # Deployed; the status at the end fails (nothing answers at the URL) and says so.
    assert "Applied" in result.stdout, result.stdout + result.stderr
    assert re.search(r"^\d+ new, 0 changed, 0 unchanged\.$", result.stdout, re.MULTILINE)
    assert "Namespace/shop-staging" in result.stdout
    assert result.returncode == 1
    assert "does not answer" in result.stderr


@needs_kustomize
def test_an_unreachable_cluster_is_one_line_and_exit_1(setup: dict[str, Any]) -> None:
    fake_kubectl(setup["bin"], reachable=False)
    write_environment(setup["tmp"], "https://shop.staging.test")
    result = shopctl_deploy(setup)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"Error: cannot reach the cluster of context kind-shop: {UNREACHABLE}"
    )
    assert commands(setup["bin"]) == ["kustomize", "version"]


@needs_kustomize
def test_a_failed_rollout_is_named_with_its_reason_and_exit_1(setup: dict[str, Any]) -> None:
    fake_kubectl(setup["bin"], fail_rollout="deployment/order")
    write_environment(setup["tmp"], "https://shop.staging.test")
    result = shopctl_deploy(setup)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Error: deployment/order did not roll out (" + ROLLOUT_FAILED + ")" in " ".join(
        result.stderr.split()
    )
    assert "Traceback" not in result.stderr
    assert commands(setup["bin"])[-1] == "rollout"


def test_no_kubectl_is_one_line_and_exit_1(setup: dict[str, Any], tmp_path: Path) -> None:
    write_environment(setup["tmp"], "https://shop.staging.test")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        deploy_args(setup["manifests"]),
        capture_output=True,
        text=True,
        env=shopctl_env(setup["tmp"], empty),
        cwd=setup["tmp"],
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("Error: kubectl is not on PATH")
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_secrets_say_which_file_to_make(setup: dict[str, Any]) -> None:
    write_environment(setup["tmp"], "https://shop.staging.test")
    secrets = setup["manifests"] / "overlays" / "dev" / "secrets" / "shop.env"
    secrets.unlink()
    result = shopctl_deploy(setup)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{secrets} is missing: copy shop.env.example beside it" in " ".join(
        result.stderr.split()
    )
    assert calls(setup["bin"]) == []


def test_empty_secrets_are_refused_before_anything_is_applied(setup: dict[str, Any]) -> None:
    write_environment(setup["tmp"], "https://shop.staging.test")
    secrets = setup["manifests"] / "overlays" / "dev" / "secrets" / "shop.env"
    secrets.write_text(
        "\n".join(
            "JWT_SECRET=" if line.startswith("JWT_SECRET=") else line
            for line in secrets.read_text().splitlines()
        )
    )
    result = shopctl_deploy(setup)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fill in JWT_SECRET before deploying" in result.stderr
    assert calls(setup["bin"]) == []
    # A dry run still shows the manifests, but says what a real deploy would refuse.
    if REAL_KUBECTL is not None:
        dry = shopctl_deploy(setup, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "Warning:" in dry.stderr and "JWT_SECRET empty" in dry.stderr


def test_an_environment_without_a_kube_context_is_refused(setup: dict[str, Any]) -> None:
    config = write_environment(setup["tmp"], "https://shop.staging.test")
    config.write_text(
        "\n".join(line for line in config.read_text().splitlines() if "kube_context" not in line)
    )
    result = shopctl_deploy(setup)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "environment 'staging' names no kube_context" in result.stderr
    assert calls(setup["bin"]) == []


def test_an_unknown_overlay_names_the_ones_there_are(setup: dict[str, Any]) -> None:
    write_environment(setup["tmp"], "https://shop.staging.test", overlay="qa")
    result = shopctl_deploy(setup)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no overlay 'qa'" in result.stderr and "dev, local-cluster, prod" in result.stderr


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("shop-gateway:0.1.0", ("shop-gateway", "0.1.0")),
        ("reg.test:5000/shop/shop-cart:1.2", ("reg.test:5000/shop/shop-cart", "1.2")),
        ("reg.test:5000/shop/shop-cart", ("reg.test:5000/shop/shop-cart", None)),
        ("shop-user@sha256:" + "a" * 64, ("shop-user@sha256:" + "a" * 64, None)),
    ],
)
def test_image_references_split_into_name_and_tag(
    reference: str, expected: tuple[str, str | None]
) -> None:
    assert split_image(reference) == expected


def test_a_broken_kustomization_is_one_line_and_exit_1(setup: dict[str, Any]) -> None:
    write_environment(setup["tmp"], "https://shop.staging.test")
    (setup["manifests"] / "overlays" / "dev" / "kustomization.yaml").write_text("a: [b\n")
    result = shopctl_deploy(setup, "--dry-run")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot read" in result.stderr and "kustomization.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def fresh_clone(destination: Path) -> Path:
    """What a fresh clone holds for deploy: the project's shopctl.toml and manifests/ as
    committed (no secrets/*.env: git ignores them)."""
    destination.mkdir()
    shutil.copy(REPO / "shopctl.toml", destination / "shopctl.toml")
    shutil.copytree(
        REPO / "manifests", destination / "manifests", ignore=shutil.ignore_patterns("*.env")
    )
    return destination


def deploy_in(
    folder: Path, setup: dict[str, Any], *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """`shopctl deploy ARGS` run in `folder`, with no --manifests and no user file."""
    return subprocess.run(
        [sys.executable, "-m", "shopctl", "deploy", *args],
        capture_output=True,
        text=True,
        env={**shopctl_env(setup["tmp"], setup["bin"]), "SHOP_CONFIG": "/nonexistent", **env},
        cwd=folder,
        timeout=120,
    )


@needs_kustomize
def test_the_readmes_dry_run_works_on_a_fresh_clone(setup: dict[str, Any]) -> None:
    """No secrets/shop.env, no --manifests: the project found from the working directory
    (as a non-editable install needs), its Secret rendered from placeholders, and a warning
    naming the file to fill. Nothing is written into the clone."""
    clone = fresh_clone(setup["tmp"] / "clone")
    (clone / "sub").mkdir()
    result = deploy_in(clone / "sub", setup, "--env", "dev", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (secret,) = [doc for doc in documents if doc["kind"] == "Secret"]
    example = clone / "manifests" / "overlays" / "dev" / "secrets" / "shop.env.example"
    keys = [
        line.partition("=")[0]
        for line in example.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    ]
    assert sorted(secret["data"]) == sorted(keys)
    assert set(secret["data"].values()) == {"(masked)"}
    (ingress,) = [doc for doc in documents if doc["kind"] == "Ingress"]
    assert ingress["spec"]["rules"][0]["host"] == "shop.dev.example.com"  # the dev overlay
    shop_env_file = example.with_name("shop.env")
    warning = " ".join(result.stderr.split())
    assert (
        f"Warning: {shop_env_file} is missing, so its Secret was rendered with placeholder "
        "values; before a real deploy, copy shop.env.example beside it and fill it in" in warning
    )
    assert not shop_env_file.exists()
    (render,) = calls(setup["bin"])
    rendered_from = Path(render["args"][1])
    assert rendered_from.parts[-2:] == ("overlays", "dev")
    assert not rendered_from.exists()  # the temporary copy is gone
    # A real deploy from the same clone still refuses, naming the file.
    real = deploy_in(clone, setup, "--env", "dev")
    assert real.returncode == 1
    assert f"{shop_env_file} is missing: copy shop.env.example" in " ".join(real.stderr.split())


@needs_kustomize
def test_environments_and_overlays_match_by_name(setup: dict[str, Any]) -> None:
    """`local-cluster` (kind, minikube, k3d on this machine) renders the overlay of that
    name; `local`, the shop `shopctl up` runs, has no cluster and says where to go."""
    clone = fresh_clone(setup["tmp"] / "clone")
    result = deploy_in(clone, setup, "--env", "local-cluster", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    (render,) = calls(setup["bin"])
    assert Path(render["args"][1]).parts[-2:] == ("overlays", "local-cluster")
    assert "objects for local-cluster (overlay local-cluster, namespace shop)" in " ".join(
        result.stderr.split()
    )
    images = {
        container["image"]
        for doc in yaml.safe_load_all(result.stdout)
        if doc and doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"localhost/shop/shop-{service.name}:dev" for service in SERVICES}

    local = deploy_in(clone, setup, "--env", "local", "--dry-run")
    assert local.returncode == 1
    assert " ".join(local.stderr.split()) == (
        "Error: 'local' is the shop `shopctl up` runs on this machine, not a cluster: for a "
        "cluster on this machine (kind, minikube, k3d) deploy --env local-cluster; "
        "deployable: dev, prod, local-cluster"
    )
    assert len(calls(setup["bin"])) == 1  # nothing more asked of kubectl


def test_deploy_needs_an_environment_named(setup: dict[str, Any]) -> None:
    clone = fresh_clone(setup["tmp"] / "clone")
    result = deploy_in(clone, setup, "--dry-run")
    assert result.returncode == 1
    assert " ".join(result.stderr.split()) == (
        "Error: deploy needs --env NAME, the environment whose cluster to deploy to: dev, "
        "prod, local-cluster (see `shopctl env list`)"
    )
    assert calls(setup["bin"]) == []


def test_url_is_refused_in_one_line_and_shop_url_set_for_other_commands_is_not(
    setup: dict[str, Any],
) -> None:
    write_environment(setup["tmp"], "https://shop.staging.test")
    result = shopctl_deploy(setup, "--url", "http://127.0.0.1:3000")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: deploy takes --env NAME, not --url:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert calls(setup["bin"]) == []
    if REAL_KUBECTL is not None:
        with_url = subprocess.run(
            deploy_args(setup["manifests"], "--dry-run"),
            capture_output=True,
            text=True,
            env={**shopctl_env(setup["tmp"], setup["bin"]), "SHOP_URL": "http://127.0.0.1:3000"},
            cwd=setup["tmp"],
            timeout=120,
        )
        assert with_url.returncode == 0, with_url.stderr
