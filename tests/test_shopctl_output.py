"""shopctl's output for programs and people: `-o table|json|yaml` (the same content three
ways), `status --watch`, `--version`, shell completion, `-q` / `-v`, and its messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, eventually_sync, free_base_port, shop_env, shopctl
from typer.testing import CliRunner, Result

from shopctl.console import plural
from shopctl.main import app
from shopctl.qa_report import StockCheck, conservation_line
from shopctl.state import load_state

FORMATS = ("table", "json", "yaml")


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})


def rows(table: str) -> list[list[str]]:
    """The cells of each row of a Rich table as printed."""
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in table.splitlines()
        if line.startswith("│")
    ]


def parsed(output_format: str, text: str) -> Any:
    return json.loads(text) if output_format == "json" else yaml.safe_load(text)


@pytest.fixture
def in_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Run from the checkout (its shopctl.toml) with no user file."""
    monkeypatch.chdir(REPO)
    return {"SHOP_CONFIG": str(tmp_path / "none.toml"), "SHOP_DATA_DIR": str(tmp_path)}


def test_env_list_in_every_format(in_the_project: dict[str, str]) -> None:
    results = {form: invoke("env", "list", "-o", form, env=in_the_project) for form in FORMATS}
    for result in results.values():
        assert result.exit_code == 0, result.output
    documents = [parsed(form, results[form].stdout) for form in ("json", "yaml")]
    assert documents[0] == documents[1]
    table = [row for row in rows(results["table"].stdout)]
    records = documents[0]["environments"]
    assert [[r["name"], r["url"], r["deploys_to"] or "-", r["defined_in"]] for r in records] == (
        table
    )
    assert [r["name"] for r in records] == ["local", "dev", "prod", "local-cluster"]
    assert documents[0]["files_read"] == ["shopctl.toml"]
    # For people, the files read are said after the table; for programs, on stderr.
    assert "Files read, each overriding the one before: shopctl.toml" in results["table"].stdout
    assert "Files read" in results["json"].stderr and "Files read" not in results["json"].stdout


def test_env_show_in_every_format(in_the_project: dict[str, str]) -> None:
    results = {
        form: invoke("env", "show", "dev", "-o", form, env=in_the_project) for form in FORMATS
    }
    for result in results.values():
        assert result.exit_code == 0, result.output
    document = parsed("json", results["json"].stdout)
    assert document == parsed("yaml", results["yaml"].stdout)
    table = {row[0]: row[1] for row in rows(results["table"].stdout)}
    assert document["name"] == "dev"
    assert {key.lower().replace(" ", "_"): value for key, value in table.items()} == {
        key: "-" if value is None else value for key, value in document.items() if key != "name"
    }
    assert document["kube_context"] == "shop-dev"
    assert document["admin_password"].startswith("$SHOP_DEV_ADMIN_PASSWORD")


def test_status_with_nothing_running_as_a_document(tmp_path: Path) -> None:
    result = invoke("status", "--data-dir", str(tmp_path), "-o", "json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout) == {
        "data_dir": str(tmp_path),
        "running": False,
        "ready": False,
        "services": [],
        "backing_servers": [],
    }


def test_version_is_the_installed_packages() -> None:
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"shopctl {version('shop')}\n"


def installed_shopctl() -> str:
    """The `shopctl` script pip installed next to this Python: completion scripts name the
    program as it was invoked."""
    return str(Path(sys.executable).parent / "shopctl")


def test_shell_completion_script_and_answers() -> None:
    env = shop_env(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    script = subprocess.run(
        [installed_shopctl(), "--show-completion", "bash"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _shopctl_completion shopctl" in script.stdout
    # What bash asks once the script is loaded: the words that complete `shopctl st`.
    asked = {"_SHOPCTL_COMPLETE": "complete_bash", "COMP_WORDS": "shopctl st", "COMP_CWORD": "1"}
    answer = subprocess.run(
        [installed_shopctl()], capture_output=True, text=True, env={**env, **asked}, timeout=60
    )
    assert answer.stdout.split() == ["status"], answer.stderr
    asked |= {"COMP_WORDS": "shopctl status --wa", "COMP_CWORD": "2"}
    answer = subprocess.run(
        [installed_shopctl()], capture_output=True, text=True, env={**env, **asked}, timeout=60
    )
    assert answer.stdout.split() == ["--watch"], answer.stderr


def test_quiet_leaves_the_result_alone(in_the_project: dict[str, str]) -> None:
    result = invoke("-q", "env", "list", env=in_the_project)
    assert result.exit_code == 0, result.output
    assert "Environments" in result.stdout and "Files read" not in result.output


def test_verbose_and_quiet_together_is_a_usage_error() -> None:
    result = invoke("-v", "-q", "env", "list")
    assert result.exit_code == 2, result.output
    assert "contradict" in result.output


def test_a_bad_duration_names_its_option(tmp_path: Path) -> None:
    result = invoke("checkout", "--duration", "5x", "--data-dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--duration': '5x' is not a duration" in result.output


def test_counts_are_pluralised() -> None:
    assert [plural(n, "product") for n in (0, 1, 2)] == ["0 products", "1 product", "2 products"]
    one = [StockCheck("p1", "Mug", at_start=5, sold=1, left=4)]
    assert conservation_line(one) == (
        "Stock conservation holds for 1 product touched "
        "(1 unit sold + stock left = stock at start)."
    )
    two = [*one, StockCheck("p2", "Cap", at_start=5, sold=2, left=3)]
    assert conservation_line(two).startswith("Stock conservation holds for all 2 products")


# -- with a whole shop ----------------------------------------------------------------------


@pytest.mark.slow
def test_watch_sees_a_service_stop_and_up_keeps_the_password_to_itself(tmp_path: Path) -> None:
    data_dir = tmp_path / "shop"
    env = shop_env(BCRYPT_ROUNDS="4")
    base = free_base_port()
    watch_log = tmp_path / "watch.log"
    watcher = None
    try:
        up = shopctl("up", "--detach", "--data-dir", data_dir, "--base-port", base, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        password = (data_dir / "admin_password").read_text().strip()
        assert password not in up.stdout + up.stderr
        assert f"its password is in {data_dir / 'admin_password'}" in up.stdout

        status = shopctl("status", "--data-dir", data_dir, "-o", "json", env=env)
        assert status.returncode == 0, status.stderr
        document = json.loads(status.stdout)
        assert document["ready"] and {s["state"] for s in document["services"]} == {"ready"}
        assert len(document["services"]) == 5

        # -q: the result without the progress bar; -v: where the credentials came from.
        quiet = shopctl("-q", "seed", "--dry-run", "--data-dir", data_dir, env=env)
        assert quiet.returncode == 0, quiet.stderr
        assert "Seed of local" in quiet.stdout and "Checking" not in quiet.stdout
        loud = shopctl("-v", "seed", "--dry-run", "--data-dir", data_dir, env=env)
        assert loud.returncode == 0, loud.stderr
        assert f"credentials from {data_dir / 'admin_password'}" in loud.stdout
        assert "Checking" in loud.stdout

        command = [sys.executable, "-m", "shopctl", "status", "--watch", "--interval", "0.3"]
        with watch_log.open("w") as log:
            watcher = subprocess.Popen(
                [*command, "--data-dir", str(data_dir)], stdout=log, stderr=log, env=env, cwd=REPO
            )
        cart = next(s for s in load_state(data_dir).services if s.name == "cart")
        line = f"cart ({cart.url}): "
        eventually_sync(
            lambda: f"{line}ready" in watch_log.read_text(), "cart ready", seen=watch_log.read_text
        )
        os.kill(cart.process.pid, signal.SIGTERM)
        eventually_sync(
            lambda: f"{line}exited" in watch_log.read_text(),
            "cart exited",
            seen=watch_log.read_text,
        )
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 0, watch_log.read_text()
        # One line per change: each part once when first seen, cart again when it stopped
        # (and, if a look fell while it drained its requests, when it said "not ready").
        lines = watch_log.read_text().splitlines()
        cart_lines = [x.removeprefix(line) for x in lines if x.startswith("cart (")]
        assert cart_lines[0] == "ready" and cart_lines[-1].startswith("exited"), lines
        assert set(cart_lines[1:-1]) <= {"not ready"} and len(cart_lines) <= 3, lines
        assert len([x for x in lines if x.startswith("gateway (")]) == 1, lines
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        down = shopctl("down", "--data-dir", data_dir, env=env)
        assert down.returncode == 0, down.stdout + down.stderr
