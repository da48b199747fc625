"""shopctl's commands in-process (CliRunner): help, argument errors, and what up / down /
status do with a state file, a taken port or nothing running. Whole-shop runs are in
test_shopctl_e2e.py."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from support import eventually_sync
from typer.testing import CliRunner, Result

from shopctl import processes, stack
from shopctl.main import app
from shopctl.state import STATE_FILE, RunningService, ShopState, load_state


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    # Wide, so Rich never folds a path or URL the assertions look for.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})


@pytest.fixture
def idle_process(tmp_path: Path) -> Iterator[processes.ManagedProcess]:
    """A real process that idles until a signal ends it; stopped afterwards."""
    command = [sys.executable, "-c", "import signal; signal.pause()"]
    process = processes.spawn(command, log_path=tmp_path / "idle.log")
    try:
        yield process
    finally:
        processes.stop(process, timeout=5)


def write_state(data_dir: Path, *services: RunningService) -> ShopState:
    state = ShopState(data_dir, base_port=3000, services=list(services))
    state.save()
    return state


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for command in ("up", "down", "status"):
        assert f" {command} " in result.output


@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_each_command_has_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "--data-dir" in result.output and "SHOP_DATA_DIR" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["up", "--base-port", "0"],
        ["up", "--base-port", "65533"],
        ["up", "--base-port", "three"],
        ["up", "--timeout", "0"],
        ["up", "--log-level", "loud"],
        ["up", "--no-such-option"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    result = invoke(*args, "--data-dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert not (tmp_path / STATE_FILE).exists()


def test_down_with_nothing_running_is_fine(tmp_path: Path) -> None:
    result = invoke("down", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Nothing is running" in result.output


def test_status_with_nothing_running_exits_1(tmp_path: Path) -> None:
    result = invoke("status", "--data-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "Nothing is running" in result.output


def test_data_dir_comes_from_the_environment(tmp_path: Path) -> None:
    result = invoke("down", env={"SHOP_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert str(tmp_path) in result.output


def test_up_refuses_a_taken_port_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The gateway's port (base + 0) is the taken one.
        result = invoke("up", "--detach", "--data-dir", str(tmp_path), "--base-port", str(port))
    assert result.exit_code == 1, result.output
    assert f"port {port} for the gateway service is already in use" in result.output
    assert "--base-port" in result.output
    assert "Traceback" not in result.output
    assert load_state(tmp_path) is None
    assert not (tmp_path / "mongodb").exists()


def test_up_refuses_while_the_shop_runs(
    tmp_path: Path, idle_process: processes.ManagedProcess
) -> None:
    write_state(tmp_path, RunningService("product", "http://127.0.0.1:1", 1, idle_process))
    result = invoke("up", "--detach", "--data-dir", str(tmp_path), "--base-port", "3000")
    assert result.exit_code == 1, result.output
    assert "already running" in result.output and "shopctl down" in result.output
    assert "stopped" not in result.output
    assert idle_process.alive()


def test_up_on_a_shop_with_a_part_gone_says_which_and_how_to_start_it_whole(
    tmp_path: Path, idle_process: processes.ManagedProcess
) -> None:
    gone = processes.ManagedProcess(pid=2**22 + 1, create_time=1.0, command=["gone"])
    port = processes.free_port()  # nothing answers there: not restarted by hand either
    write_state(
        tmp_path,
        RunningService("product", "http://127.0.0.1:1", 1, idle_process),
        RunningService("cart", f"http://127.0.0.1:{port}", port, gone),
    )
    result = invoke("up", "--detach", "--data-dir", str(tmp_path), "--base-port", "3000")
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "already running" in said and "though cart stopped" in said, said
    assert f"down --data-dir {tmp_path}`, then `" in said and " up`, starts it whole" in said
    assert idle_process.alive()


def test_down_stops_exactly_what_the_state_file_lists(
    tmp_path: Path, idle_process: processes.ManagedProcess
) -> None:
    # As `down` runs in another process: only the state file, no handle on the child.
    listed = processes.ManagedProcess.from_state(idle_process.to_state())
    write_state(tmp_path, RunningService("product", "http://127.0.0.1:1", 1, listed))
    result = invoke("down", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert f"Stopped product (PID {idle_process.pid})" in result.output
    eventually_sync(lambda: not idle_process.alive(), "the listed process stopped", 10)
    assert not (tmp_path / STATE_FILE).exists()


def test_down_never_kills_a_recycled_pid(
    tmp_path: Path, idle_process: processes.ManagedProcess
) -> None:
    # Same PID, different start time: a process that merely reuses the PID we recorded.
    stranger = processes.ManagedProcess(
        idle_process.pid, idle_process.create_time - 1000.0, idle_process.command
    )
    write_state(tmp_path, RunningService("product", "http://127.0.0.1:1", 1, stranger))
    result = invoke("down", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Stopped product" not in result.output
    assert idle_process.alive()


def test_down_stops_its_process_after_the_clock_was_stepped(
    tmp_path: Path, idle_process: processes.ManagedProcess
) -> None:
    # The boot time the kernel reports moved 20 s since `up` recorded the process (a stepped
    # clock moves every create time): same PID, same command, so still the shop's process.
    stepped = processes.ManagedProcess(
        idle_process.pid, idle_process.create_time - 20.0, idle_process.command
    )
    write_state(tmp_path, RunningService("product", "http://127.0.0.1:1", 1, stepped))
    result = invoke("down", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Stopped product" in result.output
    eventually_sync(lambda: not idle_process.alive(), "the stepped process stopped", 10)


def test_a_stale_state_file_is_cleared_on_up(tmp_path: Path) -> None:
    gone = processes.ManagedProcess(pid=2**22 + 1, create_time=1.0, command=["gone"])
    write_state(tmp_path, RunningService("product", "http://127.0.0.1:1", 1, gone))
    stack.refuse_if_running(tmp_path)
    assert load_state(tmp_path) is None


def test_status_reports_a_service_that_exited(tmp_path: Path) -> None:
    gone = processes.ManagedProcess(pid=2**22 + 1, create_time=1.0, command=["gone"])
    write_state(tmp_path, RunningService("product", "http://127.0.0.1:1", 1, gone))
    result = invoke("status", "--data-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "product" in result.output and "exited" in result.output


def test_status_of_a_gateway_that_does_not_answer(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{processes.free_port()}"
    result = invoke("status", "--url", url)
    assert result.exit_code == 1, result.output
    assert f"the gateway at {url} does not answer" in result.output


def test_a_damaged_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 1, "services": "?"}))
    result = invoke("status", "--data-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "is damaged" in result.output and "Traceback" not in result.output


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command's words, sub-commands of groups (`env list`) included."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.parametrize("path", list(_command_paths(typer.main.get_command(app))), ids=" ".join)
def test_every_command_has_help_with_an_example_in_80_columns(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
