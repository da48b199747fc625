"""`shopctl build`: one container image per service, with the container tool at hand."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NamedTuple

import typer
from rich.table import Table

from shopctl import processes
from shopctl.console import Consoles, OutputFormat, failures_reported, get_consoles
from shopctl.environments import resolve_environment
from shopctl.errors import ShopctlError
from shopctl.images import DEFAULT_REGISTRY, image_name, project_dir, valid_tag, version_tag
from shopctl.options import EnvName, Output, default_data_dir
from shopctl.services import CONTRACT_BASE_PORT, SERVICES, Service

INFO_TIMEOUT = 30.0
_REGISTRY = re.compile(
    r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$"
)
# os/arch[/variant], as OCI image indexes name platforms: linux/amd64, linux/arm64/v8.
_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")
# What `docker info` says when images are kept in containerd's store, which (unlike the
# classic one) holds a multi-platform image, so `buildx build --load` can keep one.
CONTAINERD_STORE = "io.containerd.snapshotter"


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
    # `<tool> info`'s output, once check_engine has asked.
    info: str = ""


@dataclass(frozen=True)
class BuiltImage:
    service: str
    reference: str
    pushed: bool
    platforms: tuple[str, ...] = ()


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


def _platforms(value: str | None) -> str | None:
    for platform in (value or "").split(","):
        if value is not None and not _PLATFORM.match(platform.strip()):
            raise typer.BadParameter(
                f"{platform.strip()!r} is not a platform; give os/arch, comma-separated, "
                "e.g. linux/amd64,linux/arm64"
            )
    return value


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
    platform: Annotated[
        str | None,
        typer.Option(
            help="Build for these platforms, comma-separated, as one multi-platform image "
            "(docker buildx; podman and buildah make a manifest list). Several need --push "
            "with docker's classic image store. Example: --platform linux/amd64,linux/arm64",
            envvar="SHOP_PLATFORM",
            callback=_platforms,
            show_default=False,
        ),
    ] = None,
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
    * `shopctl build --platform linux/amd64,linux/arm64 --env dev --push`
    * `shopctl build -o json` (the tool's output on stderr, the images on stdout)
    """
    consoles = get_consoles(ctx).with_output(output)
    platforms = [name.strip() for name in platform.split(",")] if platform else []
    with failures_reported(consoles):
        if registry is None and env is not None:
            registry = resolve_environment(env, None, default_data_dir()).registry
        builder = check_engine(find_builder(tool))
        if platforms:
            check_multi_platform(builder, platforms, push=push)
        chosen = [service for service in SERVICES if not services or service.name in services]
        project = project_dir()
        built = build_images(
            builder,
            chosen,
            registry=registry or DEFAULT_REGISTRY,
            tag=tag or version_tag(project),
            push=push,
            consoles=consoles,
            context=project,
            platforms=platforms,
        )
    images = [
        {
            "service": image.service,
            "image": image.reference,
            "pushed": image.pushed,
            "platforms": list(image.platforms),
        }
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


def check_engine(builder: Builder) -> Builder:
    """`<tool> info` must answer: a docker client with no daemon behind it builds nothing.
    The builder is returned with what `info` said."""
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
    return replace(builder, info=result.stdout)


def check_multi_platform(builder: Builder, platforms: list[str], *, push: bool) -> None:
    """What --platform needs before anything is built. docker builds with buildx, and its
    classic image store holds one platform of an image: several must go to a registry
    (--push) unless the engine keeps images in containerd's store."""
    if builder.tool is not ContainerTool.DOCKER:
        return
    try:
        result = processes.run_program([builder.path, "buildx", "version"], timeout=INFO_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ShopctlError(f"cannot run {builder.path} buildx version: {error}") from None
    if result.returncode != 0:
        reason = processes.last_line(result.stderr or result.stdout) or "no output"
        raise ShopctlError(
            f"--platform builds with docker buildx, which is not installed ({reason}): "
            "install the buildx plugin, or pick another --tool"
        )
    if len(platforms) > 1 and not push and CONTAINERD_STORE not in builder.info:
        raise ShopctlError(
            f"{len(platforms)} platforms make one multi-platform image, which docker's image "
            "store here cannot keep: add --push to send it to the registry, or build one "
            "--platform at a time"
        )


def build_images(
    builder: Builder,
    services: list[Service],
    *,
    registry: str,
    tag: str,
    push: bool,
    consoles: Consoles,
    context: Path,
    platforms: list[str] | None = None,
) -> list[BuiltImage]:
    """Build (and push) each service's image in turn; the first failure stops the rest."""
    dockerfile = context / "Dockerfile"
    if not dockerfile.is_file():
        raise ShopctlError(f"no Dockerfile at {dockerfile}: run shopctl from a checkout")
    platforms = platforms or []
    built: list[BuiltImage] = []
    for service in services:
        reference = f"{image_name(registry, service.name)}:{tag}"
        on = f" for {', '.join(platforms)}" if platforms else ""
        consoles.say(f"[bold]Building[/] {reference}{on} with {builder.tool.value}", markup=True)
        arguments = [
            "--file",
            str(dockerfile),
            "--build-arg",
            f"SERVICE={service.name}",
            "--build-arg",
            f"PORT={service.port(CONTRACT_BASE_PORT)}",
        ]
        for step in build_steps(builder, reference, arguments, str(context), platforms, push):
            if step.may_fail:
                _run_quietly(step.command)
                continue
            if step.what.startswith("pushing"):
                consoles.say(f"[bold]Pushing[/] {reference}", markup=True)
            _run_step(step.command, step.what, consoles, multi_platform=len(platforms) > 1)
        built.append(BuiltImage(service.name, reference, push, tuple(platforms)))
    return built


class Step(NamedTuple):
    what: str
    command: list[str]
    # A tidying step whose failure (nothing to tidy) is expected and not shown.
    may_fail: bool = False


def build_steps(
    builder: Builder,
    reference: str,
    arguments: list[str],
    context: str,
    platforms: list[str],
    push: bool,
) -> list[Step]:
    """The commands that build (and push) one image, each with what it does. Without
    platforms every tool takes `build --tag` then `push`. With them: docker builds with
    buildx, which pushes (or loads) as it builds; podman and buildah build a manifest list
    (removed first: `--manifest` adds to an existing one) and push it with every image it
    lists; nerdctl builds with --platform and pushes all of them."""
    tool = builder.path
    building, pushing = f"building {reference}", f"pushing {reference}"
    steps: list[Step] = []
    if not platforms:
        steps.append(Step(building, [tool, "build", *arguments, "--tag", reference, context]))
        return steps + ([Step(pushing, [tool, "push", reference])] if push else [])
    on = ["--platform", ",".join(platforms)]
    if builder.tool is ContainerTool.DOCKER:
        keep = "--push" if push else "--load"
        command = [tool, "buildx", "build", *on, *arguments, "--tag", reference, keep, context]
        return [Step(building, command)]
    if builder.tool in (ContainerTool.PODMAN, ContainerTool.BUILDAH):
        steps.append(Step("clearing", [tool, "manifest", "rm", reference], may_fail=True))
        steps.append(
            Step(building, [tool, "build", *on, *arguments, "--manifest", reference, context])
        )
        push_list = [tool, "manifest", "push", "--all", reference, f"docker://{reference}"]
        return steps + ([Step(pushing, push_list)] if push else [])
    steps.append(Step(building, [tool, "build", *on, *arguments, "--tag", reference, context]))
    return steps + ([Step(pushing, [tool, "push", "--all-platforms", reference])] if push else [])


def _run_quietly(command: list[str]) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        processes.run_program(command, timeout=INFO_TIMEOUT)


def _run_step(
    command: list[str], what: str, consoles: Consoles, *, multi_platform: bool = False
) -> None:
    def show(line: str) -> None:
        consoles.say(f"  {line}", style="dim", soft_wrap=True)

    consoles.detail(f"$ {shlex.join(command)}")
    try:
        result = processes.stream_program(command, show)
    except OSError as error:
        raise ShopctlError(f"{what} failed: cannot run {command[0]}: {error.strerror}") from None
    if result.returncode != 0:
        reason = processes.last_line(result.stdout) or "no output"
        hint = ""
        if multi_platform and "docker driver" in result.stdout:
            # buildx's default builder (the `docker` driver) builds one platform.
            hint = (
                "; make a builder that builds several: docker buildx create --use "
                "--driver docker-container"
            )
        raise ShopctlError(f"{what} failed (exit code {result.returncode}): {reason}{hint}")


def built_table(built: list[BuiltImage], builder: Builder) -> Table:
    table = Table(title=f"Images built with {builder.tool.value}", title_justify="left")
    multi_platform = any(image.platforms for image in built)
    table.add_column("service")
    table.add_column("image", overflow="fold")
    if multi_platform:
        table.add_column("platforms", overflow="fold")
    table.add_column("pushed")
    for image in built:
        platforms = [", ".join(image.platforms)] if multi_platform else []
        table.add_row(image.service, image.reference, *platforms, "yes" if image.pushed else "no")
    return table
