"""DATA_DIR/state.json: what `shopctl up` started, so `down` and `status` find it by PID."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopctl.embedded import EmbeddedServer
from shopctl.errors import ShopctlError
from shopctl.processes import ManagedProcess

STATE_FILE = "state.json"
STATE_VERSION = 1


@dataclass
class RunningService:
    name: str
    url: str
    port: int
    process: ManagedProcess
    # The environment it was started with, in the process that started it only: it holds
    # secrets, so it is never written to state.json (see stack.start_variant).
    env: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "port": self.port,
            "process": self.process.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningService:
        return cls(
            name=state["name"],
            url=state["url"],
            port=int(state["port"]),
            process=ManagedProcess.from_state(state["process"]),
        )


@dataclass
class ShopState:
    """Everything one `shopctl up` started, in start order."""

    data_dir: Path
    base_port: int
    started_at: float = field(default_factory=time.time)
    # The `shopctl up` process itself when it runs in the foreground (it stops the rest).
    owner: ManagedProcess | None = None
    embedded: list[EmbeddedServer] = field(default_factory=list)
    services: list[RunningService] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.data_dir / STATE_FILE

    def processes(self) -> list[ManagedProcess]:
        owner = [self.owner] if self.owner else []
        return [
            *owner,
            *(service.process for service in self.services),
            *(server.process for server in self.embedded),
        ]

    def anything_alive(self) -> bool:
        return any(process.alive() for process in self.processes())

    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "data_dir": str(self.data_dir),
            "base_port": self.base_port,
            "started_at": self.started_at,
            "owner": self.owner.to_state() if self.owner else None,
            "embedded": [server.to_state() for server in self.embedded],
            "services": [service.to_state() for service in self.services],
        }

    def save(self) -> None:
        """Write the file atomically, so a reader never sees half of it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.to_state(), indent=2) + "\n", encoding="utf-8")
        os.replace(partial, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def load_state(data_dir: Path) -> ShopState | None:
    """The state `up` left in `data_dir`, or None when it holds none."""
    path = data_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ShopctlError(f"cannot read {path}: {error}") from None
    if raw.get("version") != STATE_VERSION:
        raise ShopctlError(f"{path} was written by another shopctl version; remove it")
    owner = raw.get("owner")
    try:
        return ShopState(
            data_dir=data_dir,
            base_port=int(raw["base_port"]),
            started_at=float(raw["started_at"]),
            owner=ManagedProcess.from_state(owner) if owner else None,
            embedded=[EmbeddedServer.from_state(item) for item in raw["embedded"]],
            services=[RunningService.from_state(item) for item in raw["services"]],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ShopctlError(f"{path} is damaged ({error!r}); remove it") from None
