"""The service images' names and tags, as `shopctl build` makes them and `deploy` sets them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import typer

from shopctl import processes
from shopctl.environments import CONFIG_NAME, project_root
from shopctl.errors import ShopctlError
from shopkit.app import package_version

# The checkout shopctl was installed from, when it was (an editable install): its
# Dockerfile and manifests/ are here. Installed from a wheel, this is site-packages.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REGISTRY = "localhost/shop"
GIT_TIMEOUT = 10.0
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def project_dir(cwd: Path | None = None) -> Path:
    """The project `build` and `deploy` work on, as `shopctl.toml` is found: the nearest
    folder from the working directory up that holds one, else the checkout shopctl was
    installed from in editable mode. Neither is an error saying where to run from."""
    found = project_root(cwd)
    if found is not None:
        return found
    if (PROJECT_ROOT / CONFIG_NAME).is_file():
        return PROJECT_ROOT
    raise ShopctlError(
        f"no {CONFIG_NAME} in {Path.cwd() if cwd is None else cwd} or above it: run shopctl "
        "in the project's checkout (its Dockerfile and manifests/ are beside shopctl.toml)"
    )


def valid_tag(value: str | None) -> str | None:
    """Typer callback for a tag option: a tag as registries take it (at most 128 characters
    of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`)."""
    if value is not None and not _TAG.match(value):
        raise typer.BadParameter(f"{value!r} is not an image tag, e.g. 0.1.0 or 0.1.0-c56a1e9")
    return value


def image_name(registry: str, service: str) -> str:
    """`REGISTRY/shop-<service>`, the repository an image of `service` is pushed to."""
    return f"{registry.rstrip('/')}/shop-{service}"


def split_image(reference: str) -> tuple[str, str | None]:
    """An image reference as (name, tag): `host:5000/shop-x:1.0` -> (`host:5000/shop-x`,
    `1.0`). A digest (`@sha256:...`) stays part of the name; no tag gives None."""
    if "@" in reference:
        return reference, None
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return reference, None
    return name, tag


def version_tag(root: Path) -> str:
    """The images' tag: the package version, then the commit (`0.1.0-c56a1e9`), marked
    `-dirty` when the work tree has changes the commit does not hold. Outside a git
    checkout (or without git) it is the version alone."""
    tag = package_version()
    sha = _git(root, "rev-parse", "--short", "HEAD")
    if not sha:
        return tag
    tag = f"{tag}-{sha}"
    if _git(root, "status", "--porcelain"):
        tag += "-dirty"
    return tag


def _git(root: Path, *args: str) -> str:
    if processes.find_program("git") is None:
        return ""
    try:
        result = processes.run_program(["git", "-C", str(root), *args], timeout=GIT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
