"""Where a command points: named environments from `shopctl.toml` files, or a bare `--url`.

Three files are read, each overriding the ones before it key by key:

- the project's `shopctl.toml`, found in the working directory or the nearest parent: it is
  committed, so it holds the team's defaults;
- the user's own, `$SHOP_CONFIG` or `<user config dir>/shop/shopctl.toml`: what is personal
  (the name your kubeconfig gives a cluster, the variables your credentials are in);
- `shopctl.local.toml` beside the project's file (ignored by git): personal, and for this
  checkout only.

That is git's order (system, then global, then the repository's own `.git/config`) and
clig.dev's (project over user) once one sees that the project-level files they mean are not
committed: a committed file is the team's, like git's system file, and a person's own
settings override it. It also keeps a checkout's committed file from redirecting an
environment you defined yourself (and the token its variable holds) to another URL.

Each `[env.NAME]` table names a gateway `url`, how to get an admin token (the *name* of an
environment variable holding a token or a password, never the secret itself), and where
`deploy` applies the manifests (`overlay`: `manifests/overlays/<NAME>` unless it says
otherwise). `local` always exists: the shop `shopctl up` runs; it has no cluster.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shopctl.errors import ShopctlError, command
from shopctl.options import default_data_dir
from shopctl.state import load_state

CONFIG_NAME = "shopctl.toml"
LOCAL_CONFIG_NAME = "shopctl.local.toml"
LOCAL = "local"
DEFAULT_ADMIN_EMAIL = "admin@shop.local"
DEFAULT_LOCAL_URL = "http://127.0.0.1:3000"
# Where credentials come from when an environment does not name its own variables.
DEFAULT_TOKEN_VARIABLE = "SHOP_ADMIN_TOKEN"
DEFAULT_PASSWORD_VARIABLE = "SHOP_ADMIN_PASSWORD"
URL_WHEN_DOWN = "is the --url right?"
_SECRET_WORDS = re.compile(r"password|token|secret", re.IGNORECASE)
_VARIABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


@dataclass(frozen=True)
class Environment:
    """One place the shop runs, as the commands need it."""

    name: str
    url: str
    source: str
    admin_email: str = DEFAULT_ADMIN_EMAIL
    admin_password_env: str = DEFAULT_PASSWORD_VARIABLE
    admin_token_env: str = DEFAULT_TOKEN_VARIABLE
    kube_context: str | None = None
    namespace: str = "shop"
    # The kustomize overlay deploy renders; an environment from a file defaults to its name.
    overlay: str | None = None
    registry: str | None = None
    description: str = ""
    # What to do when nothing answers at `url` (a sentence ending in a command).
    when_down: str = ""

    @property
    def is_local(self) -> bool:
        """The shop `shopctl up` runs from a data directory on this machine."""
        return self.name == LOCAL


class EnvironmentEntry(BaseModel):
    """One `[env.NAME]` table; unknown keys are refused so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: str | None = Field(None, pattern=r"^https?://[^\s/]+.*$")
    description: str | None = None
    admin_email: str | None = Field(None, min_length=3)
    admin_password_env: str | None = Field(None, pattern=_VARIABLE_NAME)
    admin_token_env: str | None = Field(None, pattern=_VARIABLE_NAME)
    kube_context: str | None = Field(None, min_length=1)
    namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    overlay: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    registry: str | None = Field(None, min_length=1)


def project_config(cwd: Path) -> Path | None:
    """The nearest `shopctl.toml` from `cwd` upwards."""
    for folder in (cwd, *cwd.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def project_root(cwd: Path | None = None) -> Path | None:
    """The project's folder: where the nearest `shopctl.toml` is (its manifests/ and
    Dockerfile are beside it)."""
    found = project_config(Path.cwd() if cwd is None else cwd)
    return found.parent if found else None


def user_config(environ: Mapping[str, str]) -> Path:
    given = environ.get("SHOP_CONFIG")
    if given:
        return Path(given).expanduser()
    return Path(platformdirs.user_config_dir("shop", appauthor=False)) / CONFIG_NAME


def config_files(cwd: Path, environ: Mapping[str, str]) -> list[Path]:
    """The files read, lowest precedence first: the project's (committed), the user's, the
    project's local one (not committed)."""
    project = project_config(cwd)
    found = [project, user_config(environ)]
    if project is not None:
        found.append(project.with_name(LOCAL_CONFIG_NAME))
    return [path for path in found if path is not None and path.is_file()]


def read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The `[env.*]` tables of one file, validated; every problem names the file and key."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ShopctlError(f"cannot read {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ShopctlError(f"{path} is not valid TOML: {error}") from None
    unknown = set(document) - {"env"}
    if unknown:
        raise ShopctlError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "environments go in [env.NAME] tables"
        )
    tables = document.get("env", {})
    if not isinstance(tables, dict):
        raise ShopctlError(f"{path}: 'env' must be a table of [env.NAME] tables")
    entries: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ShopctlError(f"{path}: env.{name} must be a table")
        for key in table:
            if key not in EnvironmentEntry.model_fields and _SECRET_WORDS.search(key):
                raise ShopctlError(
                    f"{path}: env.{name}.{key}: never put a secret in this file; name the "
                    "environment variable that holds it (admin_password_env or "
                    "admin_token_env)"
                )
        try:
            entry = EnvironmentEntry.model_validate(table)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise ShopctlError(f"{path}: env.{name}.{where}: {problem['msg']}") from None
        entries[name] = entry.model_dump(exclude_none=True)
    return entries


def local_environment(data_dir: Path) -> Environment:
    """`local`: the gateway `shopctl up` started from `data_dir`, or the default port."""
    state = load_state(data_dir)
    url = DEFAULT_LOCAL_URL
    if state is not None:
        gateway = next((s for s in state.services if s.name == "gateway"), None)
        url = gateway.url if gateway else f"http://127.0.0.1:{state.base_port}"
    return Environment(
        name=LOCAL,
        url=url,
        source="built-in (shopctl up)",
        description="The shop `shopctl up` runs on this machine",
        when_down=f"start it with {start_command(data_dir)}",
    )


def start_command(data_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """The command that starts the shop of `data_dir`, naming it only when `shopctl up`
    would not pick it by itself."""
    environ = os.environ if environ is None else environ
    default = Path(environ.get("SHOP_DATA_DIR") or default_data_dir()).expanduser()
    named = "" if default.resolve() == data_dir.resolve() else f" --data-dir {data_dir}"
    return command(f"up --detach{named}")


def running_target(
    env_name: str | None,
    url: str | None,
    data_dir: Path,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Environment:
    """The target of a command that talks to a shop (seed, checkout). `local` means the shop
    `shopctl up` started from `data_dir`: when it started none, that is an error saying so,
    rather than a call to whatever answers on the default port (another shop, which would
    be sent this data dir's admin password)."""
    target = resolve_environment(env_name, url, data_dir, environ, cwd)
    if target.is_local and url is None and load_state(data_dir) is None:
        raise ShopctlError(
            f"no shop is running from {data_dir} (no state.json there): start it with "
            f"{start_command(data_dir)}, or target another shop with --env NAME or --url URL"
        )
    return target


def load_environments(
    data_dir: Path, cwd: Path | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Environment]:
    """Every environment by name: `local` first, then those the files define."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    merged: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for path in config_files(cwd, environ):
        for name, values in read_entries(path).items():
            merged.setdefault(name, {}).update(values)
            sources[name] = str(path)
    environments = {LOCAL: local_environment(data_dir)}
    for name, values in merged.items():
        base = environments.get(name)
        if base is None:
            if "url" not in values:
                raise ShopctlError(f"{sources[name]}: env.{name} needs a url")
            environments[name] = Environment(
                name=name,
                source=sources[name],
                **{"overlay": name, **values},
                when_down=(
                    f"is it deployed, and is its URL right? ({command(f'env show {name}')})"
                ),
            )
        else:
            environments[name] = replace(base, **values, source=sources[name])
    return environments


def resolve_environment(
    env_name: str | None,
    url: str | None,
    data_dir: Path,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Environment:
    """The target of a command: `--env NAME`, `--url URL` (alone, or overriding the named
    environment's URL), or `local` when neither is given."""
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        raise ShopctlError(f"--url {url!r} is not an http(s) URL, e.g. http://127.0.0.1:3000")
    if env_name is None and url is not None:
        return Environment(name="url", url=url.rstrip("/"), source="--url", when_down=URL_WHEN_DOWN)
    environments = load_environments(data_dir, cwd, environ)
    name = env_name or LOCAL
    found = environments.get(name)
    if found is None:
        known = ", ".join(sorted(environments))
        raise ShopctlError(
            f"no environment named {name!r}; known: {known} (see `shopctl env list`)"
        )
    if url is None:
        return replace(found, url=found.url.rstrip("/"))
    return replace(found, url=url.rstrip("/"), when_down=URL_WHEN_DOWN)


@dataclass(frozen=True)
class AdminCredentials:
    """A token to use as is, or an email and password to log in with."""

    email: str
    password: str | None = None
    token: str | None = None
    source: str = ""


@dataclass(frozen=True)
class CredentialSource:
    """One place an admin credential may come from, in the order they are tried."""

    kind: str  # "token" or "password"
    where: str  # `$VARIABLE` or a file's path
    value: str | None  # None: not set (or no such file)
    email: str


def credential_sources(
    environment: Environment, data_dir: Path, environ: Mapping[str, str] | None = None
) -> list[CredentialSource]:
    """Where an admin token or password for `environment` may come from, first one first:
    its token variable, its password variable and, for `local`, the password `shopctl up`
    used (ADMIN_PASSWORD when set, else the one it made and kept in the data directory)."""
    environ = os.environ if environ is None else environ
    email = environ.get("SHOP_ADMIN_EMAIL") or environment.admin_email
    token_variable, password_variable = environment.admin_token_env, environment.admin_password_env
    sources = [
        CredentialSource("token", f"${token_variable}", environ.get(token_variable) or None, email),
        CredentialSource(
            "password", f"${password_variable}", environ.get(password_variable) or None, email
        ),
    ]
    if environment.is_local:
        # As `shopctl up` chose them.
        email = environ.get("SHOP_ADMIN_EMAIL") or environ.get("ADMIN_EMAIL") or email
        kept_file = data_dir / "admin_password"
        kept = kept_file.read_text(encoding="utf-8").strip() if kept_file.is_file() else None
        sources += [
            CredentialSource(
                "password", "$ADMIN_PASSWORD", environ.get("ADMIN_PASSWORD") or None, email
            ),
            CredentialSource("password", str(kept_file), kept or None, email),
        ]
    return sources


def admin_credentials(
    environment: Environment, data_dir: Path, environ: Mapping[str, str] | None = None
) -> AdminCredentials:
    """How to act as the admin in `environment`: the first of `credential_sources` that is
    set; none is an error naming what to set."""
    sources = credential_sources(environment, data_dir, environ)
    for source in sources:
        if source.value is not None and source.kind == "token":
            return AdminCredentials(source.email, token=source.value, source=source.where)
        if source.value is not None:
            return AdminCredentials(source.email, source.value, source=source.where)
    raise ShopctlError(
        f"no admin credentials for {environment.name} ({environment.url}): set "
        f"{environment.admin_token_env} to a token or {environment.admin_password_env} to "
        f"the password of {sources[1].email}"
        + (
            f" (or start the shop with {start_command(data_dir, environ)})"
            if environment.is_local
            else ""
        )
    )
