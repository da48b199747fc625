"""`shopctl up --reload` restarts only the service whose code changed. The whole-shop test
runs a real `shopctl up` on a copy of the services' source (the watched tree is where the
services import their code from: the directory `up` runs in first), so editing it touches
nothing of the repository's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePath

import pytest
from support import (
    REPO,
    eventually_sync,
    free_base_port,
    http,
    shop_admin_token,
    shop_env,
    shopctl,
)
from typer.testing import CliRunner

from shopctl import probes
from shopctl.main import app
from shopctl.reloading import is_source
from shopctl.state import load_state

SERVICES = ("gateway", "product", "user", "order", "cart")
SOURCE_PACKAGES = ("shopkit", "svc_gateway", "svc_product", "svc_user", "svc_order", "svc_cart")


@pytest.mark.parametrize(
    "path",
    ["routes.py", "templates/product.html", "static/shop.css", "pages/views.py", "queries.sql"],
)
def test_code_and_the_files_read_at_start_up_are_source(path: str) -> None:
    assert is_source(PurePath(path))


@pytest.mark.parametrize(
    "path",
    [
        "__pycache__/routes.cpython-311.pyc",
        "routes.pyc",
        ".routes.py.swp",
        "routes.py~",
        "4913",  # vim's probe that it may write the directory
        ".#routes.py",
        "#routes.py#",
        "routes.py.___jb_tmp___",
        "tests/test_routes.py",
    ],
)
def test_caches_swap_files_and_tests_are_not_source(path: str) -> None:
    assert not is_source(PurePath(path))


def test_reload_with_detach_is_refused() -> None:
    result = CliRunner().invoke(app, ["up", "--reload", "--detach"], env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    assert "--reload" in result.output and "drop --detach" in result.output


# -- a whole shop ---------------------------------------------------------------------------


def service_pids(data_dir: Path) -> dict[str, int]:
    state = load_state(data_dir)
    assert state is not None
    return {service.name: service.process.pid for service in state.services}


def server_pids(data_dir: Path) -> dict[str, int]:
    state = load_state(data_dir)
    assert state is not None
    return {server.name: server.pid for server in state.embedded}


class ReloadingShop:
    """`shopctl up --reload` in the foreground, run from `source`, printing to a file."""

    def __init__(self, source: Path, data_dir: Path, output: Path) -> None:
        self.source, self.data_dir, self.output = source, data_dir, output
        self.base = free_base_port()
        self.gateway = f"http://127.0.0.1:{self.base}"
        command = [sys.executable, "-m", "shopctl", "up", "--reload", "--data-dir", data_dir]
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                [*map(str, command), "--base-port", str(self.base)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=shop_env(BCRYPT_ROUNDS="4"),
                cwd=source,
            )

    def printed(self) -> str:
        return self.output.read_text()

    def ready(self, name: str) -> bool:
        port = self.base + SERVICES.index(name)
        return probes.get(f"http://127.0.0.1:{port}/ready", timeout=1).ok

    def wait_until_ready(self, names: tuple[str, ...] = SERVICES) -> None:
        def all_ready() -> bool:
            assert self.process.poll() is None, self.printed()
            return all(self.ready(name) for name in names)

        eventually_sync(all_ready, f"{', '.join(names)} ready", 60, seen=self.printed)

    def wait_until_restarted(self, before: dict[str, int], names: tuple[str, ...]) -> None:
        """Until each of `names` runs under a new PID (state.json says so) and is ready."""

        def restarted() -> bool:
            now = service_pids(self.data_dir)
            return all(now[name] != before[name] for name in names) and all(
                self.ready(name) for name in names
            )

        eventually_sync(restarted, f"{', '.join(names)} restarted", 60, seen=self.printed)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of the services' source, for the test to edit."""
    copy = tmp_path / "src"
    for package in SOURCE_PACKAGES:
        shutil.copytree(
            REPO / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return copy


@pytest.fixture
def reloading_shop(source: Path, tmp_path: Path) -> Iterator[ReloadingShop]:
    shop = ReloadingShop(source, tmp_path / "shop", tmp_path / "up.out")
    try:
        yield shop
    finally:
        if shop.process.poll() is None:
            shop.process.kill()
            shop.process.wait()
        shopctl("down", "--data-dir", shop.data_dir)


def append(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


@pytest.mark.slow
def test_reload_restarts_only_the_service_whose_code_changed(
    reloading_shop: ReloadingShop, source: Path
) -> None:
    shop = reloading_shop
    shop.wait_until_ready()
    assert "Watching shopkit/ (every service), svc_gateway/" in shop.printed()
    assert f" in {source}" in shop.printed()
    servers = server_pids(shop.data_dir)
    product = {
        "name": "Reload Mug",
        "description": "Outlives a restart",
        "price": 9.99,
        "category": "kitchen",
        "stock": 3,
    }
    token = shop_admin_token(shop.gateway, shop.data_dir)
    code, created = http("POST", f"{shop.gateway}/api/products", product, token)
    assert code == 201, created
    product_url = f"{shop.gateway}/api/products/{created['data']['id']}"

    # What an editor leaves beside the code, and Python's caches, restart nothing; a save of
    # one of the product service's files restarts it alone.
    before = service_pids(shop.data_dir)
    for junk in (".routes.py.swp", "4913", "routes.py~", "__pycache__/routes.cpython-311.pyc"):
        (source / "svc_order" / junk).parent.mkdir(exist_ok=True)
        (source / "svc_order" / junk).write_text("junk")
    routes = source / "svc_product" / "routes.py"
    original = routes.read_text()
    append(routes, "\n# an edit\n")
    shop.wait_until_restarted(before, ("product",))
    after = service_pids(shop.data_dir)
    assert {name: after[name] for name in SERVICES if name != "product"} == {
        name: before[name] for name in SERVICES if name != "product"
    }
    assert "Reloading product: svc_product/routes.py changed" in shop.printed()
    assert http("GET", product_url)[0] == 200

    # A burst (a checkout touching every file of the cart service) is one restart. The user
    # service's change after it is seen after it, so by then the burst has been handled.
    before = service_pids(shop.data_dir)
    for path in sorted((source / "svc_cart").glob("*.py")):
        append(path, "\n# checked out\n")
    shop.wait_until_restarted(before, ("cart",))
    append(source / "svc_user" / "app.py", "\n# later\n")
    shop.wait_until_restarted(before, ("user",))
    assert shop.printed().count("Reloading cart:") == 1, shop.printed()
    assert service_pids(shop.data_dir)["order"] == before["order"]

    # A broken edit: the service is shown exited with the error from its log; fixing the
    # file brings it back, on the same data.
    before = service_pids(shop.data_dir)
    append(routes, "\nthis is not python(\n")
    eventually_sync(
        lambda: (
            re.search(r"^product \(\S+\): exited \(1\)", shop.printed(), re.MULTILINE) is not None
            and "SyntaxError: '(' was never closed" in shop.printed()
        ),
        "the failed restart shown with its error",
        60,
        seen=shop.printed,
    )
    status = shopctl("status", "--data-dir", shop.data_dir)
    assert status.returncode == 1, status.stdout + status.stderr
    routes.write_text(original)
    shop.wait_until_restarted(before, ("product",))
    code, kept = http("GET", product_url)
    assert code == 200 and kept["data"]["name"] == "Reload Mug", kept

    # shopkit is every service's code: all restart, the backing servers stay.
    before = service_pids(shop.data_dir)
    append(source / "shopkit" / "responses.py", "\n# shared\n")
    shop.wait_until_restarted(before, SERVICES)
    assert server_pids(shop.data_dir) == servers
    assert http("GET", product_url)[0] == 200
    shop_admin_token(shop.gateway, shop.data_dir)  # the accounts are still there

    # state.json names the restarted processes: `down` stops them even with `up` gone.
    listed = load_state(shop.data_dir)
    assert listed is not None
    shop.process.kill()
    shop.process.wait()
    down = shopctl("down", "--data-dir", shop.data_dir)
    assert down.returncode == 0, down.stdout + down.stderr
    for process in listed.processes():
        eventually_sync(lambda p=process: not p.alive(), f"PID {process.pid} stopped", 15)
