"""The e-mails the local shop sent: one .eml file each under DATA_DIR/mail/, written by the SMTP
sink `shopctl up` runs (shopctl/smtp_sink.py) and read by `shopctl mail`.

Each file is the message as the shop handed it over, after two header lines the sink adds:
``X-Received-At`` (when it arrived, UTC) and ``X-RcptTo`` (the envelope's recipients, which
may differ from To). Files are numbered in the order they arrived (000001.eml, ...): the
number is the e-mail's id in `shopctl mail`. A file appears whole (written aside, then
renamed), so a reader never sees half of one.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

_NAME = re.compile(r"^(\d{6,})\.eml$")
RECEIVED_AT = "X-Received-At"
ENVELOPE_TO = "X-RcptTo"


def mail_dir(data_dir: Path) -> Path:
    """Where the sink of the shop in ``data_dir`` keeps what it receives."""
    return data_dir / "mail"


class MailWriter:
    """Writes received messages as numbered files (one writer per folder: the sink)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        numbers = (_number(path) for path in directory.iterdir())
        self._next = itertools.count(max((n for n in numbers if n is not None), default=0) + 1)

    def save(self, content: bytes, recipients: list[str], when: datetime | None = None) -> Path:
        moment = (when or datetime.now(UTC)).astimezone(UTC)
        stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        head = f"{RECEIVED_AT}: {stamp}\r\n{ENVELOPE_TO}: {', '.join(recipients)}\r\n"
        path = self.directory / f"{next(self._next):06d}.eml"
        partial = self.directory / f".{path.name}.partial"
        with partial.open("wb") as file:
            file.write(head.encode("ascii", "replace") + content)
        os.replace(partial, path)
        return path


@dataclass(frozen=True)
class StoredMail:
    """One e-mail the sink kept."""

    id: int
    path: Path
    message: EmailMessage

    @property
    def received_at(self) -> datetime | None:
        try:
            return datetime.fromisoformat(str(self.message[RECEIVED_AT]).replace("Z", "+00:00"))
        except ValueError:
            return None

    @property
    def recipients(self) -> str:
        return str(self.message[ENVELOPE_TO] or self.message["To"] or "")

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    def part(self, subtype: str) -> str | None:
        """The text of its text/plain or text/html part; None if it has none."""
        body = self.message.get_body(preferencelist=(subtype,))
        if body is None or body.get_content_subtype() != subtype:
            return None
        return body.get_content()


def read_mail(path: Path) -> StoredMail:
    message = message_from_bytes(path.read_bytes(), policy=default_policy)
    assert isinstance(message, EmailMessage)
    number = _number(path)
    return StoredMail(number if number is not None else 0, path, message)


def mail_files(directory: Path) -> list[Path]:
    """The kept e-mails' files, oldest first."""
    if not directory.is_dir():
        return []
    found = [(number, path) for path in directory.iterdir() if (number := _number(path))]
    return [path for _, path in sorted(found)]


def _number(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match[1]) if match else None
