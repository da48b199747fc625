"""The SMTP sink `shopctl up` runs when SMTP_URL is not set: an SMTP server (aiosmtpd) on
127.0.0.1 that accepts every message and keeps it as a file (shopctl/mailbox.py), so that
the shop's e-mails can be read with `shopctl mail` and never reach anyone.

    python -m shopctl.smtp_sink --port 2525 --dir DATA_DIR/mail

It stops on SIGTERM or SIGINT. aiosmtpd comes with the `local` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from shopctl.mailbox import MailWriter

HOST = "127.0.0.1"


class KeepInFolder:
    """aiosmtpd's handler: every message accepted, written to the folder."""

    def __init__(self, writer: MailWriter) -> None:
        self.writer = writer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        path = self.writer.save(content, [str(address) for address in envelope.rcpt_tos])
        print(f"kept a message to {', '.join(envelope.rcpt_tos)} as {path.name}", flush=True)
        return "250 Message accepted for delivery"


async def serve(port: int, directory: Path) -> None:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = KeepInFolder(MailWriter(directory))
    # hostname given: aiosmtpd would otherwise ask DNS for this host's name (slow offline).
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="shop-mail-sink", enable_SMTPUTF8=True), HOST, port
    )
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    print(f"SMTP sink on {HOST}:{port}, keeping messages in {directory}", flush=True)
    await stopped.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopctl.smtp_sink", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where to keep the messages")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
