"""Environments: the project's shopctl.toml, the user's file and the checkout's
shopctl.local.toml overriding it, `local`, --url, where admin credentials come from, and
`shopctl env list/show` (in-process, no shop; one slow test against a real one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, running_shop, shop_env, shopctl
from typer.testing import CliRunner, Result

from shopctl.environments import (
    LOCAL,
    admin_credentials,
    load_environments,
    resolve_environment,
)
from shopctl.errors import ShopctlError
from shopctl.main import app

PROJECT = """
[env.staging]
description = "Staging"
url = "https://staging.shop.test"
admin_email = "ops@shop.test"
admin_password_env = "STAGING_PASSWORD"
kube_context = "staging-cluster"
overlay = "dev"

[env.prod]
url = "https://shop.test"
admin_token_env = "PROD_TOKEN"
kube_context = "prod-cluster"
overlay = "prod"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder with a shopctl.toml, as the working directory; no user file."""
    folder = tmp_path / "project"
    (folder / "sub").mkdir(parents=True)
    (folder / "shopctl.toml").write_text(PROJECT)
    monkeypatch.chdir(folder / "sub")  # found from a subfolder too
    monkeypatch.setenv("SHOP_CONFIG", str(tmp_path / "user.toml"))
    for name in ("SHOP_ADMIN_TOKEN", "SHOP_ADMIN_PASSWORD", "ADMIN_PASSWORD", "ADMIN_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    yield folder


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})


def test_local_is_built_in_and_the_files_add_the_rest(project: Path, tmp_path: Path) -> None:
    environments = load_environments(tmp_path / "no-shop")
    assert list(environments) == [LOCAL, "staging", "prod"]
    assert environments[LOCAL].url == "http://127.0.0.1:3000"
    staging = environments["staging"]
    assert staging.url == "https://staging.shop.test"
    assert staging.kube_context == "staging-cluster"
    assert staging.namespace == "shop"  # the default
    assert staging.source == str(project / "shopctl.toml")


def test_local_points_at_the_gateway_shopctl_up_started(project: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "shop"
    data_dir.mkdir()
    state = {
        "version": 1,
        "data_dir": str(data_dir),
        "base_port": 4100,
        "started_at": 0,
        "embedded": [],
        "services": [],
    }
    (data_dir / "state.json").write_text(json.dumps(state))
    assert resolve_environment(None, None, data_dir).url == "http://127.0.0.1:4100"


def test_the_users_file_overrides_the_project_key_by_key(project: Path, tmp_path: Path) -> None:
    (tmp_path / "user.toml").write_text(
        '[env.staging]\nurl = "http://127.0.0.1:9999"\n\n[env.mine]\nurl = "http://10.0.0.5:3000"\n'
    )
    environments = load_environments(tmp_path)
    assert environments["staging"].url == "http://127.0.0.1:9999"
    assert environments["staging"].kube_context == "staging-cluster"  # kept from the project
    assert environments["mine"].url == "http://10.0.0.5:3000"


def test_this_checkouts_local_file_overrides_the_users_and_the_projects(
    project: Path, tmp_path: Path
) -> None:
    """The order: the committed project file (the team's), the user's file (personal), then
    shopctl.local.toml beside the project file (personal, this checkout only)."""
    (tmp_path / "user.toml").write_text(
        '[env.staging]\nurl = "http://127.0.0.1:9999"\nkube_context = "mine"\n'
    )
    (project / "shopctl.local.toml").write_text('[env.staging]\nkube_context = "this-checkout"\n')
    staging = load_environments(tmp_path)["staging"]
    assert (staging.url, staging.kube_context, staging.admin_email) == (
        "http://127.0.0.1:9999",  # the user's, over the project's
        "this-checkout",  # the checkout's, over the user's
        "ops@shop.test",  # the project's, where nobody overrides it
    )
    assert staging.source == str(project / "shopctl.local.toml")
    listed = invoke("env", "list", "--data-dir", str(tmp_path))
    assert listed.exit_code == 0, listed.output
    order = ", ".join(
        str(path)
        for path in (
            project / "shopctl.toml",
            tmp_path / "user.toml",
            project / "shopctl.local.toml",
        )
    )
    assert f"Files read, each overriding the one before: {order}" in " ".join(listed.output.split())
    helped = invoke("env", "--help")
    assert "shopctl.local.toml" in helped.output and "overriding" in helped.output


def test_an_environments_overlay_is_its_name_unless_it_says(project: Path, tmp_path: Path) -> None:
    (tmp_path / "user.toml").write_text('[env.qa]\nurl = "http://qa.test"\n')
    environments = load_environments(tmp_path)
    assert environments["qa"].overlay == "qa"
    assert environments["staging"].overlay == "dev"  # as its table says
    assert environments[LOCAL].overlay is None  # the shop `shopctl up` runs: no cluster


def test_url_alone_or_overriding_a_named_environment(project: Path, tmp_path: Path) -> None:
    alone = resolve_environment(None, "http://10.1.2.3:3000/", tmp_path)
    assert (alone.name, alone.url) == ("url", "http://10.1.2.3:3000")
    both = resolve_environment("staging", "http://127.0.0.1:1234", tmp_path)
    assert (both.name, both.url, both.kube_context) == (
        "staging",
        "http://127.0.0.1:1234",
        "staging-cluster",
    )
    with pytest.raises(ShopctlError, match="not an http"):
        resolve_environment(None, "ftp://x", tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[env.x]\nurl = 'http://a'\nadmin_password = 'hunter2'\n", "never put a secret"),
        ("[env.x]\nurl = 'http://a'\ncolour = 'blue'\n", "env.x.colour: Extra inputs"),
        ("[env.x]\nurl = 'localhost:3000'\n", "env.x.url"),
        ("[env.x]\nadmin_email = 'a@b.c'\n", "env.x needs a url"),
        ("[env.x\n", "not valid TOML"),
        ("[environments.x]\nurl = 'http://a'\n", "unknown top-level key"),
        ("[env.x]\nurl = 'http://a'\nadmin_token_env = 'not a name'\n", "admin_token_env"),
    ],
)
def test_a_bad_file_is_one_clear_error_naming_file_and_key(
    project: Path, tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "user.toml").write_text(content)
    with pytest.raises(ShopctlError, match=message) as raised:
        load_environments(tmp_path)
    assert "user.toml" in str(raised.value)


def test_an_unknown_environment_names_the_known_ones(project: Path, tmp_path: Path) -> None:
    result = invoke("status", "--env", "staging2", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no environment named 'staging2'; known: local, prod, staging" in result.output
    assert "Traceback" not in result.output


def test_admin_credentials_come_from_the_variables_the_environment_names(
    project: Path, tmp_path: Path
) -> None:
    environments = load_environments(tmp_path)
    staging, prod, local = environments["staging"], environments["prod"], environments[LOCAL]
    given = admin_credentials(staging, tmp_path, {"STAGING_PASSWORD": "s3cret"})
    assert (given.email, given.password, given.source) == (
        "ops@shop.test",
        "s3cret",
        "$STAGING_PASSWORD",
    )
    assert admin_credentials(prod, tmp_path, {"PROD_TOKEN": "t0ken"}).token == "t0ken"
    with pytest.raises(ShopctlError, match="set PROD_TOKEN to a token or SHOP_ADMIN_PASSWORD"):
        admin_credentials(prod, tmp_path, {})
    # local: what `shopctl up` used: ADMIN_PASSWORD, else the password it keeps.
    (tmp_path / "admin_password").write_text("kept\n")
    assert admin_credentials(local, tmp_path, {}).password == "kept"
    assert admin_credentials(local, tmp_path, {"ADMIN_PASSWORD": "env"}).password == "env"
    with pytest.raises(ShopctlError, match="or start the shop with `shopctl up --detach --data"):
        admin_credentials(local, tmp_path / "empty", {})


def test_env_list_and_show(project: Path, tmp_path: Path) -> None:
    listed = invoke("env", "list", "--data-dir", str(tmp_path))
    assert listed.exit_code == 0, listed.output
    for expected in ("local", "staging", "https://staging.shop.test", "prod-cluster/shop"):
        assert expected in listed.output
    shown = invoke(
        "env",
        "show",
        "staging",
        "--data-dir",
        str(tmp_path),
        env={"STAGING_PASSWORD": "sup3r-secret-value"},
    )
    assert shown.exit_code == 0, shown.output
    assert "$STAGING_PASSWORD (set)" in shown.output
    assert "$SHOP_ADMIN_TOKEN (not set)" in shown.output
    assert "sup3r-secret-value" not in shown.output
    # local: every place the admin's password may come from, in order, and the one used.
    (tmp_path / "admin_password").write_text("kept\n")
    local = invoke("env", "show", "local", "--data-dir", str(tmp_path))
    assert local.exit_code == 0, local.output
    text = " ".join(local.output.replace("│", " ").split())
    kept = tmp_path / "admin_password"
    assert (
        f"admin password $SHOP_ADMIN_PASSWORD (not set), then $ADMIN_PASSWORD (not set), "
        f"then {kept} (there)"
    ) in text
    assert f"admin login uses password from {kept}" in text
    assert "kept" not in text.replace(str(kept), "")
    overridden = invoke(
        "env", "show", "local", "--data-dir", str(tmp_path), env={"SHOP_ADMIN_PASSWORD": "x" * 9}
    )
    assert "admin login uses password from $SHOP_ADMIN_PASSWORD" in " ".join(
        overridden.output.replace("│", " ").split()
    )
    missing = invoke("env", "show", "nope", "--data-dir", str(tmp_path))
    assert missing.exit_code == 1
    assert "no environment named 'nope'" in missing.output


def test_the_projects_own_file_is_valid(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    environments = load_environments(tmp_path, cwd=repo, environ={"SHOP_CONFIG": "/nonexistent"})
    assert {"local", "dev", "prod"} <= set(environments)
    assert environments["prod"].overlay == "prod"


def test_local_without_a_running_shop_is_an_error_saying_how_to_start_it(
    project: Path, tmp_path: Path
) -> None:
    """Not a call to whatever answers on the default port with this data dir's password."""
    data_dir = tmp_path / "stopped"
    data_dir.mkdir()
    (data_dir / "admin_password").write_text("kept\n")
    for command in (["seed"], ["checkout", "--users", "1"]):
        result = invoke(*command, "--data-dir", str(data_dir))
        assert result.exit_code == 1, result.output
        assert " ".join(result.output.split()) == (
            f"Error: no shop is running from {data_dir} (no state.json there): start it "
            f"with `shopctl up --detach --data-dir {data_dir}`, or target another shop "
            "with --env NAME or --url URL"
        )


def test_hints_name_shopctl_as_it_was_run(tmp_path: Path) -> None:
    """Run as `.venv/bin/shopctl` (not on PATH), the hint says `.venv/bin/shopctl`."""
    script = Path(sys.executable).parent / "shopctl"
    if not script.is_file():
        pytest.skip(f"no shopctl console script beside {sys.executable}")
    typed = os.path.relpath(script, REPO)
    data_dir = tmp_path / "stopped"
    result = subprocess.run(
        [typed, "seed", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=shop_env(PATH="/usr/bin:/bin", COLUMNS="300"),
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"start it with `{typed} up --detach --data-dir {data_dir}`" in result.stderr
    assert not typed.startswith("/") or not script.is_relative_to(REPO)


@pytest.mark.slow
def test_a_real_shop_env_show_and_seed_agree_on_the_admin_password(tmp_path: Path) -> None:
    """`env show local` names the password file `seed` logs in with; once the shop is
    stopped, seed says how to start it, and a --url that does not answer says so."""
    data_dir = tmp_path / "shop"
    with running_shop(data_dir) as (url, env):
        shown = shopctl("env", "show", "local", "--data-dir", data_dir, env=env)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        text = " ".join(shown.stdout.replace("│", " ").split())
        assert f"URL {url}" in text
        assert f"admin login uses password from {data_dir / 'admin_password'}" in text
        seeded = shopctl("seed", "--dry-run", "--data-dir", data_dir, env=env)
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        assert f"Seed of local ({url}): dry run" in seeded.stdout
    stopped = shopctl("seed", "--data-dir", data_dir, env=env)
    assert stopped.returncode == 1
    assert f"no shop is running from {data_dir}" in stopped.stderr
    assert f"-m shopctl up --detach --data-dir {data_dir}`" in stopped.stderr
    password = (data_dir / "admin_password").read_text().strip()
    gone = shopctl("seed", "--url", url, env={**env, "SHOP_ADMIN_PASSWORD": password})
    assert gone.returncode == 1
    message = " ".join(gone.stderr.split())
    assert message.startswith(f"Error: the shop at {url} does not answer (")
    assert message.endswith("; is the --url right?")
