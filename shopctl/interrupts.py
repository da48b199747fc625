"""Ctrl-C (and SIGTERM) for the commands that run a while (`seed`, `checkout`): the first one
asks the command to wrap up (start nothing new, finish what is in flight, report what was
done); the next ones are counted, so a command can offer a quicker way out."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# The exit code of a command stopped by a signal, as shells report it: 128 + its number.
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


@dataclass
class Interrupts:
    count: int = 0
    signal_number: int | None = None
    requested: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal_number or signal.SIGINT)

    @property
    def name(self) -> str:
        return "Ctrl-C" if self.signal_number in (None, signal.SIGINT) else "SIGTERM"


@contextmanager
def interrupts(on_signal: Callable[[Interrupts], None] = lambda _: None) -> Iterator[Interrupts]:
    """Within a running event loop: until the block ends, SIGINT and SIGTERM set
    `.requested`, count themselves and call `on_signal`, instead of raising
    KeyboardInterrupt wherever the code happens to be."""
    loop = asyncio.get_running_loop()
    state = Interrupts()

    def handle(signum: int) -> None:
        state.count += 1
        state.signal_number = state.signal_number or signum
        state.requested.set()
        on_signal(state)

    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, handle, signum)
    try:
        yield state
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
