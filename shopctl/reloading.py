"""`shopctl up --reload`: watch the services' source and restart the service whose code
changed (every service for shopkit/), leaving the backing servers and the others running."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePath
from types import TracebackType

import watchfiles

from shopctl import processes, stack
from shopctl.probes import ServiceHealth
from shopctl.state import ShopState

# The package every service imports: a change there restarts them all.
SHARED_PACKAGE = "shopkit"
# An editor's save (a swap file, a rename, a write) or a git checkout is a burst of events:
# it counts as one change once this long passes without another...
QUIET_MS = 300
# ... or, for a longer burst, this long after it began (a restart per this much at most).
LONGEST_BURST_MS = 3000
# Not source: caches, the editors' swap, backup and lock files (vim's 4913 probe, emacs's
# .#name and #name#, JetBrains' ___jb_ files), and tests, which no service imports.
IGNORED_DIRECTORIES = frozenset(
    {
        "__pycache__",
        "tests",
        ".git",
        ".hypothesis",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
    }
)
IGNORED_FILES = re.compile(
    r"\.py[cod]$|\.sw[a-p]$|~$|^\.#|^#.*#$|^4913$|\.___jb_\w+___$|^\.DS_Store$|^flycheck_"
)

Report = Callable[[str], None]


@dataclass(frozen=True)
class WatchedPackage:
    name: str  # the import name: shopkit, svc_product
    directory: Path

    @property
    def shared(self) -> bool:
        return self.name == SHARED_PACKAGE


def package_directory(name: str, cwd: Path) -> Path | None:
    """Where `python -m ...` started in `cwd` imports package `name` from: the directory
    itself comes first on its path, then PYTHONPATH and the installed packages (an
    editable install's finder last), as for the services shopctl starts there."""
    spec = importlib.machinery.PathFinder.find_spec(name, [str(cwd), *sys.path])
    if spec is None:
        spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]).resolve() if locations else None


def source_packages(modules: Iterable[str], cwd: Path) -> list[WatchedPackage]:
    """The packages to watch: shopkit, then each service module's own package."""
    packages = []
    for name in [SHARED_PACKAGE, *modules]:
        directory = package_directory(name, cwd)
        if directory is not None:
            packages.append(WatchedPackage(name, directory))
    return packages


def is_source(relative: PurePath) -> bool:
    """Whether a change to `relative` (a path inside a package) is a change of its code."""
    return not IGNORED_DIRECTORIES.intersection(relative.parts) and not IGNORED_FILES.search(
        relative.name
    )


def describe(packages: list[WatchedPackage]) -> str:
    """One line saying what is watched, e.g. "shopkit/ (every service), svc_cart/ in /src"."""
    parents = {package.directory.parent for package in packages}
    names = [
        f"{package.name}/{' (every service)' if package.shared else ''}"
        if len(parents) == 1
        else str(package.directory)
        for package in packages
    ]
    where = f" in {parents.pop()}" if len(parents) == 1 else ""
    return f"{', '.join(names)}{where}"


class Reloader:
    """Watches `packages` in a thread (watchfiles: the kernel's notifications, no polling)
    and, when `restart_changed` is called, restarts the services whose package changed.

    Restarts happen in the caller's thread (`stack.watch`'s loop), which is the one that
    owns the shop's state; the watching thread only collects what changed."""

    def __init__(self, packages: list[WatchedPackage], report: Report) -> None:
        self.packages = packages
        self._report = report
        self._lock = threading.Lock()
        self._pending: dict[str, set[str]] = {}  # package name -> files changed, as shown
        self._waiting = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="shopctl-reload", daemon=True)
        self._restarts: Counter[str] = Counter()
        self._last_restart: dict[str, str] = {}

    def __enter__(self) -> Reloader:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def changes_waiting(self) -> bool:
        return self._waiting.is_set()

    def restart_changed(self, state: ShopState) -> None:
        """Restart, once, every service whose source changed since the last call."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._waiting.clear()
        if not pending:
            return
        every = any(package.shared for package in self.packages if package.name in pending)
        services = [
            service
            for service in state.services
            if every or processes.module_of(service.process.command) in pending
        ]
        if not services:
            return
        files = sorted(path for paths in pending.values() for path in paths)
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        names = ", ".join(service.name for service in services)
        self._report(f"Reloading {names}: {shown} changed")
        stack.restart_services(state, services, self._report)
        at = datetime.now().strftime("%H:%M:%S")
        for service in services:
            self._restarts[service.name] += 1
            self._last_restart[service.name] = at

    def annotate(self, checks: list[ServiceHealth]) -> list[ServiceHealth]:
        """`checks` with a note on each service reloaded: when last, and how many times."""
        annotated = []
        for check in checks:
            count = self._restarts[check.name]
            if count:
                times = f" ({count}x)" if count > 1 else ""
                reloaded = f"reloaded {self._last_restart[check.name]}{times}"
                check = replace(check, note="; ".join(filter(None, [check.note, reloaded])))
            annotated.append(check)
        return annotated

    def _package_of(self, path: Path) -> WatchedPackage | None:
        return next((p for p in self.packages if path.is_relative_to(p.directory)), None)

    def _is_source_path(self, change: watchfiles.Change, path: str) -> bool:
        # Only the path inside the package counts: one installed under .venv/ is still code.
        package = self._package_of(Path(path))
        return package is not None and is_source(Path(path).relative_to(package.directory))

    def _watch(self) -> None:
        try:
            for changes in watchfiles.watch(
                *(package.directory for package in self.packages),
                watch_filter=self._is_source_path,
                debounce=LONGEST_BURST_MS,
                step=QUIET_MS,
                stop_event=self._stop,
                raise_interrupt=False,
            ):
                with self._lock:
                    for _, changed in changes:
                        path = Path(changed)
                        package = self._package_of(path)
                        if package is not None:
                            shown = path.relative_to(package.directory.parent).as_posix()
                            self._pending.setdefault(package.name, set()).add(shown)
                self._waiting.set()
        except Exception as error:  # e.g. the kernel's limit of watches reached
            self._report(f"Stopped watching the source: {error}")
