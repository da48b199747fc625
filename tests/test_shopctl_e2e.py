"""`shopctl up` / `status` / `down` end to end: real processes, real embedded servers, a
temporary data directory and free ports, driven as a user would (`python -m shopctl`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support import (
    REPO,
    eventually_sync,
    free_base_port,
    http,
    running_shop,
    shop_admin_token,
    shop_env,
    shopctl,
)

from shopctl import probes, processes
from shopctl.state import load_state

pytestmark = pytest.mark.slow


def listed_processes(data_dir: Path) -> list[processes.ManagedProcess]:
    state = load_state(data_dir)
    assert state is not None
    return state.processes()


def assert_all_gone(listed: list[processes.ManagedProcess]) -> None:
    eventually_sync(
        lambda: not any(p.alive() for p in listed),
        "every process listed gone",
        15,
        seen=lambda: [p for p in listed if p.alive()],
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty data directory; whatever a failed test left running there is stopped."""
    path = tmp_path / "shop"
    yield path
    shopctl("down", "--data-dir", path)


def test_up_status_down_and_up_again_keeps_the_data(data_dir: Path) -> None:
    base = free_base_port()
    gateway = f"http://127.0.0.1:{base}"

    up = shopctl("up", "--detach", "--data-dir", data_dir, "--base-port", base)
    assert up.returncode == 0, up.stdout + up.stderr
    assert gateway in up.stdout and "ready" in up.stdout
    assert (data_dir / "jwt_secret").stat().st_mode & 0o777 == 0o600
    secret = (data_dir / "jwt_secret").read_text()

    status = shopctl("status", "--data-dir", data_dir)
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("gateway", "product", "user"):
        row = next(line for line in status.stdout.splitlines() if f" {name} " in line)
        assert " ready " in row, status.stdout

    through_gateway = shopctl("status", "--url", gateway)
    assert through_gateway.returncode == 0, through_gateway.stdout + through_gateway.stderr
    assert "product" in through_gateway.stdout

    code, listing = http("GET", f"{gateway}/api/products")
    assert code == 200, listing
    assert listing["success"] is True and isinstance(listing["data"], list)

    product = {
        "name": "Survivor Mug",
        "description": "Outlives a restart",
        "price": 9.99,
        "category": "kitchen",
        "stock": 3,
    }
    code, created = http(
        "POST", f"{gateway}/api/products", product, shop_admin_token(gateway, data_dir)
    )
    assert code == 201, created
    product_id = created["data"]["id"]

    listed = listed_processes(data_dir)
    down = shopctl("down", "--data-dir", data_dir)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_all_gone(listed)
    assert load_state(data_dir) is None
    assert not processes.accepts_connections(base)

    again = shopctl("up", "--detach", "--data-dir", data_dir, "--base-port", base)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (data_dir / "jwt_secret").read_text() == secret
    code, kept = http("GET", f"{gateway}/api/products/{product_id}")
    assert code == 200, kept
    assert kept["data"]["name"] == "Survivor Mug"
    shop_admin_token(gateway, data_dir)  # the accounts survived too

    listed = listed_processes(data_dir)
    down = shopctl("down", "--data-dir", data_dir)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_all_gone(listed)


def test_up_with_two_workers_per_service_and_down_stops_them_all(data_dir: Path) -> None:
    base = free_base_port()
    up = shopctl("up", "--detach", "--workers", "2", "--data-dir", data_dir, "--base-port", base)
    assert up.returncode == 0, up.stdout + up.stderr

    listed = listed_processes(data_dir)
    state = load_state(data_dir)
    assert state is not None
    workers = []
    for service in state.services:
        supervisor = psutil.Process(service.process.pid)
        # Its two workers (the second starts once the first serves).
        eventually_sync(lambda p=supervisor: len(p.children()) == 2, f"two {service.name}s", 30)
        workers += supervisor.children()
    code, listing = http("GET", f"http://127.0.0.1:{base}/api/products")
    assert code == 200, listing

    down = shopctl("down", "--data-dir", data_dir)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_all_gone(listed)
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive


def test_up_in_the_foreground_stops_everything_on_ctrl_c(data_dir: Path, tmp_path: Path) -> None:
    base = free_base_port()
    output = tmp_path / "up.out"
    command = [sys.executable, "-m", "shopctl", "up", "--data-dir", str(data_dir)]
    with output.open("wb") as sink:
        up = subprocess.Popen(
            [*command, "--base-port", str(base)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=shop_env(),
            cwd=REPO,
        )
    try:
        eventually_sync(
            lambda: (
                probes.get(f"http://127.0.0.1:{base}/ready", timeout=1).ok or up.poll() is not None
            ),
            "the gateway ready",
            60,
            seen=output.read_text,
            interval=0.2,
        )
        assert up.poll() is None, output.read_text()
        listed = listed_processes(data_dir)
        assert any(process.pid == up.pid for process in listed)

        # Ctrl-C twice, as an impatient user does: the second one while the first is being
        # handled once made `up` wait forever for a lock the first one held.
        up.send_signal(signal.SIGINT)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, output.read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert_all_gone(listed)
    assert load_state(data_dir) is None
    text = output.read_text()
    assert "Stopped gateway" in text and "Stopped product" in text


def test_up_detach_names_a_service_that_never_gets_ready(data_dir: Path) -> None:
    base = free_base_port()
    nowhere = f"mongodb://127.0.0.1:{processes.free_port()}/?serverSelectionTimeoutMS=300"
    result = shopctl(
        *("up", "--detach", "--data-dir", data_dir, "--base-port", base, "--timeout", "3"),
        env=shop_env(MONGODB_URI=nowhere),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Using mongodb://127.0.0.1" in result.stdout
    first_line = result.stderr.splitlines()[0]
    assert "product" in first_line, result.stderr
    assert "not ready after 3 s" in first_line or "exited while starting" in first_line
    assert "last lines of" in result.stderr and "product.log" in result.stderr
    assert load_state(data_dir) is None
    assert not (data_dir / "mongodb").exists()
    assert not processes.accepts_connections(base)
    assert not processes.accepts_connections(base + 1)


# A stranger on the cart's port: its /health names its own PID, as ours do.
STRANGER = """
import http.server, json, os
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"success": True, "data": {"status": "ok", "pid": os.getpid()}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Health).serve_forever()
"""


def stop_service(pid: int) -> tuple[list[str], dict[str, str]]:
    """Stop a service as a developer would (SIGTERM); its command line and environment."""
    process = psutil.Process(pid)
    command, env = process.cmdline(), process.environ()
    process.terminate()
    process.wait(15)
    return command, env


def test_status_and_down_follow_a_service_restarted_by_hand(tmp_path: Path) -> None:
    data_dir = tmp_path / "shop"
    with running_shop(data_dir) as (_, env):
        state = load_state(data_dir)
        assert state is not None
        recorded = {service.name: service.process.pid for service in state.services}

        # The product service restarted by hand, on its port, with its environment.
        command, product_env = stop_service(recorded["product"])
        with (tmp_path / "by-hand.log").open("wb") as log:
            by_hand = subprocess.Popen(
                command, env=product_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        # Something else entirely on the cart's port, naming its own PID in its /health.
        _, cart_env = stop_service(recorded["cart"])
        stranger = subprocess.Popen(
            [sys.executable, "-c", STRANGER], env={**cart_env, "PYTHONPATH": ""}
        )
        try:
            product_url = f"http://127.0.0.1:{product_env['PORT']}"
            cart_url = f"http://127.0.0.1:{cart_env['PORT']}"
            eventually_sync(
                lambda: (
                    probes.get(f"{product_url}/ready", timeout=1).ok
                    and probes.get(f"{cart_url}/health", timeout=1).ok
                ),
                "the product service and the stranger answering",
                30,
            )

            status = shopctl("status", "--data-dir", data_dir, env=env)
            assert status.returncode == 1, status.stdout + status.stderr  # the cart is gone
            rows = {line.split()[1]: line for line in status.stdout.splitlines() if line[:1] == "│"}
            assert " ready " in rows["product"] and f" {by_hand.pid} " in rows["product"]
            assert (
                f"restarted outside shopctl (it started PID {recorded['product']})"
                in (rows["product"])
            )
            assert "exited" in rows["cart"] and str(stranger.pid) not in rows["cart"]
            assert " ready " in rows["user"] and "outside" not in rows["user"]
            as_json = shopctl("status", "--data-dir", data_dir, "-o", "json", env=env)
            services = {s["service"]: s for s in json.loads(as_json.stdout)["services"]}
            assert services["product"]["pid"] == by_hand.pid
            assert services["product"]["note"].startswith("restarted outside shopctl")
            assert services["cart"]["note"] is None

            down = shopctl("down", "--data-dir", data_dir, env=env)
            assert down.returncode == 0, down.stdout + down.stderr
            assert f"Stopped product (PID {by_hand.pid}, restarted outside shopctl)" in (
                down.stdout
            )
            assert by_hand.wait(timeout=15) is not None
            assert stranger.poll() is None, "down stopped a process that is not the shop's"
            assert "cart" not in down.stdout
        finally:
            for process in (by_hand, stranger):
                if process.poll() is None:
                    process.kill()
                    process.wait()
