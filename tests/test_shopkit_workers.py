"""WORKERS=2: a real service (the cart service, on a real Redis) as a supervisor and two
worker processes sharing one port, over real HTTP: both workers answer, /metrics counts the
requests of both, SIGTERM stops them all, a killed worker is started again, a supervisor
killed outright takes its workers with it, and start-up problems are still one line."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support import JWT_SECRET, REPO, eventually_logged, eventually_sync, log_lines

from shopctl import processes

START_TIMEOUT = 60


def cart_env(redis_url: str, port: int, **changes: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "JWT_SECRET": JWT_SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "REDIS_URL": redis_url,
        # Never called by what these tests ask (health and metrics need no token).
        "PRODUCT_SERVICE_URL": "http://127.0.0.1:9",
        "USER_SERVICE_URL": "http://127.0.0.1:9",
        "WORKERS": "2",
        **changes,
    }


def worker_pids(path: Path) -> dict[int, int]:
    """Worker number -> pid of its latest start, from the supervisor's log lines."""
    pids = {}
    for line in log_lines(path):
        started = re.fullmatch(r"worker (\d+) started \(pid (\d+)\)", line.get("msg", ""))
        if started and line.get("worker") == 0:
            pids[int(started[1])] = int(started[2])
    return pids


def get(port: int, path: str) -> tuple[int, bytes]:
    """One request on a connection of its own (each may land on either worker)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def health_count(metrics: bytes) -> float:
    pattern = rb'http_requests_total\{[^}]*route="/health"[^}]*status="200"[^}]*\} (\S+)'
    return sum(float(value) for value in re.findall(pattern, metrics))


class Service:
    def __init__(self, process: processes.ManagedProcess, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        assert self.process.popen is not None
        return self.process.popen


@pytest.fixture
def service(redis_server_uri: str, tmp_path: Path) -> Iterator[Service]:
    """The cart service with WORKERS=2, both workers serving."""
    port = processes.free_port()
    log = tmp_path / "cart.log"
    process = processes.spawn(
        [sys.executable, "-m", "svc_cart"], log_path=log, env=cart_env(redis_server_uri, port)
    )
    try:
        eventually_logged(log, "all 2 workers serving", within=START_TIMEOUT)
        yield Service(process, port, log)
    finally:
        workers = psutil.Process(process.pid).children() if process.alive() else []
        processes.stop(process, timeout=30)
        # A failed test must not leave workers behind.
        _, left = psutil.wait_procs(workers, timeout=10)
        for worker in left:
            worker.kill()


def test_two_workers_answer_on_one_port_and_metrics_count_both(service: Service) -> None:
    pids = worker_pids(service.log)
    assert sorted(pids) == [1, 2] and pids[1] != pids[2]
    children = {child.pid for child in psutil.Process(service.popen.pid).children()}
    assert children == set(pids.values())

    def connecting() -> list[int]:
        return sorted(
            line["worker"]
            for line in log_lines(service.log)
            if line.get("msg", "").startswith("connecting to Redis at")
        )

    # Each worker has a Redis client of its own (info lines reach the log within 0.5 s).
    eventually_sync(
        lambda: connecting() == [1, 2], "both workers connecting", START_TIMEOUT, seen=connecting
    )

    for _ in range(40):
        assert get(service.port, "/health")[0] == 200
    # Forty connections, each hashed to a worker by its source port: both answered.
    eventually_sync(
        lambda: (
            len([line for line in log_lines(service.log) if line.get("path") == "/health"]) == 40
        ),
        "forty /health requests logged",
        START_TIMEOUT,
    )
    answered_by = {
        line["worker"] for line in log_lines(service.log) if line.get("path") == "/health"
    }
    assert answered_by == {1, 2}
    # Whichever worker answers a scrape, it counts every worker's requests.
    for _ in range(6):
        status, metrics = get(service.port, "/metrics")
        assert status == 200
        assert health_count(metrics) == 40


def test_sigterm_stops_every_worker_and_the_supervisor_exits_0(service: Service) -> None:
    workers = [psutil.Process(pid) for pid in worker_pids(service.log).values()]
    metrics_dirs = {Path(worker.environ()["PROMETHEUS_MULTIPROC_DIR"]) for worker in workers}
    assert len(metrics_dirs) == 1 and next(iter(metrics_dirs)).is_dir()

    service.popen.send_signal(signal.SIGTERM)
    assert service.popen.wait(timeout=60) == 0, processes.log_tail(service.log)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert not processes.accepts_connections(service.port)
    assert not next(iter(metrics_dirs)).exists()  # the supervisor's own temporary directory
    messages = [line.get("msg") for line in log_lines(service.log)]
    assert "workers stopped (exit codes [0, 0])" in messages


def test_a_killed_worker_is_started_again(service: Service) -> None:
    before = worker_pids(service.log)
    psutil.Process(before[2]).kill()

    eventually_sync(
        lambda: worker_pids(service.log)[2] != before[2],
        "worker 2 started again",
        START_TIMEOUT,
        seen=lambda: processes.log_tail(service.log),
    )
    eventually_logged(
        service.log, f"worker 2 serving (pid {worker_pids(service.log)[2]})", within=START_TIMEOUT
    )
    assert any(
        line.get("level") == "error" and "worker 2" in line["msg"] and "SIGKILL" in line["msg"]
        for line in log_lines(service.log)
    )
    assert worker_pids(service.log)[1] == before[1]  # the other worker went on serving
    assert get(service.port, "/health")[0] == 200

    service.popen.send_signal(signal.SIGTERM)
    assert service.popen.wait(timeout=60) == 0, processes.log_tail(service.log)


def test_workers_stop_when_their_supervisor_is_killed(service: Service) -> None:
    workers = [psutil.Process(pid) for pid in worker_pids(service.log).values()]
    metrics_dir = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
    service.popen.send_signal(signal.SIGKILL)
    service.popen.wait(timeout=10)

    # Each noticed and stopped itself, as SIGTERM would have stopped it.
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, processes.log_tail(service.log)
    warnings = [line for line in log_lines(service.log) if line.get("level") == "warning"]
    assert sorted(line["worker"] for line in warnings) == [1, 2], warnings
    shutil.rmtree(metrics_dir)  # the supervisor's to remove, had it not been killed


def run_service(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svc_cart"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


def test_a_datastore_that_does_not_answer_is_said_once(redis_server_uri: str) -> None:
    closed = processes.free_port()
    env = cart_env(f"redis://127.0.0.1:{closed}/0", processes.free_port())
    finished = run_service(env)

    assert finished.returncode == 1
    assert finished.stderr.count("\n") == 1, finished.stderr
    assert finished.stderr.startswith("cart service: cannot start: Redis at "), finished.stderr
    # Worker 1 found the problem; worker 2 was never started.
    messages = [json.loads(line)["msg"] for line in finished.stdout.splitlines()]
    starts = [m for m in messages if re.fullmatch(r"worker \d+ started \(pid \d+\)", m)]
    assert len(starts) == 1 and starts[0].startswith("worker 1 "), messages


def test_a_port_in_use_is_said_once(redis_server_uri: str) -> None:
    port = processes.free_port()
    with processes.socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        finished = run_service(cart_env(redis_server_uri, port))
    assert finished.returncode == 1
    assert (
        finished.stderr
        == f"cart service: cannot start: port {port} on 127.0.0.1 is already in use\n"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "Input should be greater than or equal to 1"),
        ("33", "Input should be less than or equal to 32"),
        ("two", "Input should be a valid integer"),
    ],
)
def test_a_malformed_worker_count_is_one_line(value: str, problem: str) -> None:
    finished = run_service(cart_env("redis://127.0.0.1:9/0", 9, WORKERS=value))
    assert finished.returncode == 2
    assert finished.stderr.startswith(f"cart service: WORKERS is malformed: {problem}")
    assert finished.stderr.endswith(f"(got '{value}')\n") and finished.stderr.count("\n") == 1
    assert finished.stdout == ""
