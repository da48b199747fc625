"""`shopctl build`: one container image per service, with the container tool at hand."""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopctl import processes
from shopctl.console import Consoles, OutputFormat, failures_reported, get_consoles
from shopctl.environments import resolve_environment
from shopctl.errors import ShopctlError
from shopctl.images import DEFAULT_REGISTRY, PROJECT_ROOT, image_name, valid_tag, version_tag
from shopctl.options import EnvName, Output, default_data_dir
from shopctl.services import CONTRACT_BASE_PORT, SERVICES, Service

INFO_TIMEOUT = 30.0
_REGISTRY = re.compile(
    r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$"
)


class ContainerTool(StrEnum):
    """The tools `build` can drive, in the order it looks for them on PATH. All four take
    the same `build --file --build-arg --tag`, `push` and `info`."""

    DOCKER = "docker"
    PODMAN = "podman"
    NERDCTL = "nerdctl"
    BUILDAH = "buildah"


@dataclass(frozen=True)
class Builder:
    tool: ContainerTool
    path: str


@dataclass(frozen=True)
class BuiltImage:
    service: str
    reference: str
    pushed: bool


def _known_services(names: list[str] | None) -> list[str] | None:
    known = [service.name for service in SERVICES]
    for name in names or []:
        if name not in known:
            raise typer.BadParameter(f"no service named {name!r}; choose from {', '.join(known)}")
    return names


def _registry(value: str | None) -> str | None:
    if value is not None and not _REGISTRY.match(value.rstrip("/")):
        raise typer.BadParameter(
            f"{value!r} is not a registry path (lower case), e.g. registry.example.com/shop"
        )
    return value.rstrip("/") if value else value


def build(
    ctx: typer.Context,
    services: Annotated[
        list[str] | None,
        typer.Argument(
            help="The services to build (default: all five). Example: gateway product",
            callback=_known_services,
            metavar="SERVICE",
            show_default=False,
        ),
    ] = None,
    env: EnvName = None,
    registry: Annotated[
        str | None,
        typer.Option(
            help="Where the images go, as REGISTRY/shop-NAME:TAG (default: the environment's "
            f"registry, else {DEFAULT_REGISTRY}). "
            "Example: --registry registry.example.com/shop",
            envvar="SHOP_REGISTRY",
            callback=_registry,
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            help="The images' tag (default: the package version and the git commit, "
            "-dirty with uncommitted changes). Example: --tag 0.1.0",
            envvar="SHOP_IMAGE_TAG",
            callback=valid_tag,
            show_default=False,
        ),
    ] = None,
    tool: Annotated[
        ContainerTool | None,
        typer.Option(
            help="The container tool to build with (default: the first of docker, podman, "
            "nerdctl, buildah on PATH). Example: --tool podman",
            envvar="SHOP_CONTAINER_TOOL",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    push: Annotated[
        bool,
        typer.Option("--push", help="Push each image to the registry once it is built."),
    ] = False,
    output: Output = OutputFormat.TABLE,
) -> None:
    """Build one container image per service (or the ones named) from the Dockerfile.

    Uses docker, podman, nerdctl or buildah, whichever is on PATH (or --tool), and tags
    each image REGISTRY/shop-NAME:TAG. Exits 1 if no tool or engine answers, or a build
    fails.

    Examples:

    * `shopctl build`
    * `shopctl build gateway product --tag 0.1.0`
    * `shopctl build --env dev --push`
    * `shopctl build -o json` (the tool's output on stderr, the images on stdout)
    """
    consoles = get_consoles(ctx).with_output(output)
    with failures_reported(consoles):
        if registry is None and env is not None:
            registry = resolve_environment(env, None, default_data_dir()).registry
        builder = find_builder(tool)
        check_engine(builder)
        chosen = [service for service in SERVICES if not services or service.name in services]
        built = build_images(
            builder,
            chosen,
            registry=registry or DEFAULT_REGISTRY,
            tag=tag or version_tag(),
            push=push,
            consoles=consoles,
        )
    images = [
        {"service": image.service, "image": image.reference, "pushed": image.pushed}
        for image in built
    ]
    document = {"tool": builder.tool.value, "images": images}
    consoles.print_result(output, document, built_table(built, builder))


def find_builder(tool: ContainerTool | None) -> Builder:
    """The tool asked for, or the first one on PATH; a clear error when there is none."""
    if tool is not None:
        found = processes.find_program(tool.value)
        if found is None:
            raise ShopctlError(f"{tool.value} is not on PATH; install it or pick another --tool")
        return Builder(tool, found)
    for candidate in ContainerTool:
        found = processes.find_program(candidate.value)
        if found is not None:
            return Builder(candidate, found)
    names = ", ".join(candidate.value for candidate in ContainerTool)
    raise ShopctlError(
        f"no container tool found on PATH (looked for {names}); install one, or name it with --tool"
    )


def check_engine(builder: Builder) -> None:
    """`<tool> info` must answer: a docker client with no daemon behind it builds nothing."""
    name = builder.tool.value
    try:
        result = processes.run_program([builder.path, "info"], timeout=INFO_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ShopctlError(
            f"{name} info did not answer within {INFO_TIMEOUT:.0f} s: is its engine running?"
        ) from None
    except OSError as error:
        raise ShopctlError(f"cannot run {builder.path}: {error.strerror}") from None
    if result.returncode != 0:
        reason = (
            processes.last_line(result.stderr or result.stdout) or f"exit code {result.returncode}"
        )
        raise ShopctlError(
            f"{name} cannot reach its engine ({reason}); start it, or pick another --tool"
        )


def build_images(
    builder: Builder,
    services: list[Service],
    *,
    registry: str,
    tag: str,
    push: bool,
    consoles: Consoles,
    context: Path = PROJECT_ROOT,
) -> list[BuiltImage]:
    """Build (and push) each service's image in turn; the first failure stops the rest."""
    dockerfile = context / "Dockerfile"
    if not dockerfile.is_file():
        raise ShopctlError(f"no Dockerfile at {dockerfile}: run shopctl from a checkout")
    built: list[BuiltImage] = []
    for service in services:
        reference = f"{image_name(registry, service.name)}:{tag}"
        consoles.say(f"[bold]Building[/] {reference} with {builder.tool.value}", markup=True)
        command = [
            builder.path,
            "build",
            "--file",
            str(dockerfile),
            "--build-arg",
            f"SERVICE={service.name}",
            "--build-arg",
            f"PORT={service.port(CONTRACT_BASE_PORT)}",
            "--tag",
            reference,
            str(context),
        ]
        _run_step(command, f"building {reference}", consoles)
        if push:
            consoles.say(f"[bold]Pushing[/] {reference}", markup=True)
            _run_step([builder.path, "push", reference], f"pushing {reference}", consoles)
        built.append(BuiltImage(service.name, reference, push))
    return built


def _run_step(command: list[str], what: str, consoles: Consoles) -> None:
    def show(line: str) -> None:
        consoles.say(f"  {line}", style="dim", soft_wrap=True)

    consoles.detail(f"$ {shlex.join(command)}")
    try:
        result = processes.stream_program(command, show)
    except OSError as error:
        raise ShopctlError(f"{what} failed: cannot run {command[0]}: {error.strerror}") from None
    if result.returncode != 0:
        reason = processes.last_line(result.stdout) or "no output"
        raise ShopctlError(f"{what} failed (exit code {result.returncode}): {reason}")


def built_table(built: list[BuiltImage], builder: Builder) -> Table:
    table = Table(title=f"Images built with {builder.tool.value}", title_justify="left")
    table.add_column("service")
    table.add_column("image", overflow="fold")
    table.add_column("pushed")
    for image in built:
        table.add_row(image.service, image.reference, "yes" if image.pushed else "no")
    return table
