"""`shopctl mail` / `mail show`: the e-mails the local shop sent, as its SMTP sink kept them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from click.core import ParameterSource
from rich.console import Group
from rich.table import Table
from rich.text import Text

from shopctl.commands import ShopctlCommand, ShopctlGroup
from shopctl.console import Consoles, OutputFormat, failures_reported, get_consoles, visible
from shopctl.errors import ShopctlError
from shopctl.mailbox import StoredMail, mail_dir, mail_files, read_mail
from shopctl.options import DataDir, Output

DEFAULT_LIMIT = 20
SHOWN_HEADERS = ("From", "To", "Subject", "Date", "Message-ID")

mail_app = typer.Typer(
    name="mail",
    cls=ShopctlGroup,
    help="""List and show the e-mails the shop sent: order placed, shipped, cancelled.

    `shopctl up` runs an SMTP sink when SMTP_URL is not set: the shop's e-mails go there,
    never to a real inbox, and are kept in the data directory (mail/), one .eml file
    each. `shopctl mail` lists them, newest last, and `shopctl mail show` prints one.

    Examples:

    * `shopctl mail` (the latest 20)
    * `shopctl mail --to ann@example.com -n 5`
    * `shopctl mail show --last` (the newest, its plain-text part)
    * `shopctl mail show 7 --html`
    """,
    invoke_without_command=True,
)

To = Annotated[
    str | None,
    typer.Option(
        "--to",
        help="Only e-mails to this address (any part of it, any case).",
        show_default=False,
    ),
]
Limit = Annotated[
    int,
    typer.Option(
        "--limit",
        "-n",
        help="Only the newest N (0: all).",
        min=0,
    ),
]


@mail_app.callback()
def mail(
    ctx: typer.Context,
    data_dir: DataDir,
    to: To = None,
    limit: Limit = DEFAULT_LIMIT,
    output: Output = OutputFormat.TABLE,
) -> None:
    """List the e-mails the shop sent (as `shopctl mail list` does)."""
    if ctx.invoked_subcommand is None:
        _list(get_consoles(ctx).with_output(output), data_dir, to, limit, output)


@mail_app.command("list", cls=ShopctlCommand)
def list_mail(
    ctx: typer.Context,
    data_dir: DataDir,
    to: To = None,
    limit: Limit = DEFAULT_LIMIT,
    output: Output = OutputFormat.TABLE,
) -> None:
    """List the e-mails the shop sent, newest last: id, when, to whom, subject.

    Examples:

    * `shopctl mail list`
    * `shopctl mail list -n 0 -o json` (all of them, for a program)
    """
    data_dir = _group_data_dir(ctx, data_dir)
    _list(get_consoles(ctx).with_output(output), data_dir, to, limit, output)


@mail_app.command("show", cls=ShopctlCommand)
def show_mail(
    ctx: typer.Context,
    data_dir: DataDir,
    mail_id: Annotated[
        int | None,
        typer.Argument(
            metavar="ID", help="The e-mail's id, as `shopctl mail` lists it.", show_default=False
        ),
    ] = None,
    last: Annotated[bool, typer.Option("--last", help="Show the newest e-mail.")] = False,
    html: Annotated[
        bool, typer.Option("--html", help="Print the HTML part instead of the plain text.")
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="Print the whole message as it was received.")
    ] = False,
    output: Output = OutputFormat.TABLE,
) -> None:
    """Show one e-mail: its headers, then its plain-text part (or its HTML part).

    Examples:

    * `shopctl mail show --last`
    * `shopctl mail show 3 --html` (to open in a browser: redirect it to a file)
    * `shopctl mail show 3 -o json`
    """
    consoles = get_consoles(ctx).with_output(output)
    data_dir = _group_data_dir(ctx, data_dir)
    with failures_reported(consoles):
        if html and raw:
            raise ShopctlError("--html and --raw contradict each other; pick one")
        found = _one(mail_dir(data_dir), mail_id, last)
        if raw:
            consoles.out.file.write(found.path.read_bytes().decode("utf-8", "replace"))
            return
        if html and output is OutputFormat.TABLE:
            body = found.part("html")
            if body is None:
                raise ShopctlError(f"e-mail {found.id} has no HTML part")
            consoles.out.file.write(body)
            return
        consoles.print_result(output, _document(found, full=True), _shown(found))


def _group_data_dir(ctx: typer.Context, data_dir: Path) -> Path:
    """--data-dir given before the subcommand (`shopctl mail --data-dir X show 3`) counts
    when it is not given after it."""
    parent = ctx.parent
    if (
        ctx.get_parameter_source("data_dir") is ParameterSource.DEFAULT
        and parent is not None
        and parent.get_parameter_source("data_dir") is not ParameterSource.DEFAULT
    ):
        return parent.params["data_dir"]
    return data_dir


def _list(
    consoles: Consoles, data_dir: Path, to: str | None, limit: int, output: OutputFormat
) -> None:
    with failures_reported(consoles):
        directory = mail_dir(data_dir)
        found = [read_mail(path) for path in _files(directory)]
    if to:
        found = [mail for mail in found if to.strip().lower() in mail.recipients.lower()]
    total = len(found)
    if limit:
        found = found[-limit:]
    table = Table(title=f"E-mails in {directory}", title_justify="left")
    for column, justify in (("id", "right"), ("received", "left"), ("to", "left")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    table.add_column("subject", overflow="fold")
    for stored in found:
        table.add_row(
            str(stored.id),
            _local(stored.received_at),
            visible(stored.recipients),
            visible(stored.subject),
        )
    consoles.print_result(output, [_document(stored) for stored in found], table)
    if total > len(found):
        consoles.say(f"The newest {len(found)} of {total}; -n 0 lists them all.")
    elif not found:
        consoles.say("No e-mails match." if to else "No e-mails yet.")


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ShopctlError(
            f"no e-mails kept in {directory}: a shop started with `shopctl up` (without "
            "SMTP_URL) keeps the e-mails it sends there (check --data-dir)"
        )
    return mail_files(directory)


def _one(directory: Path, mail_id: int | None, last: bool) -> StoredMail:
    if (mail_id is None) == (not last):
        raise ShopctlError("give an e-mail's id or --last (not both)")
    files = _files(directory)
    if last:
        if not files:
            raise ShopctlError(f"no e-mails in {directory} yet")
        return read_mail(files[-1])
    path = next((path for path in files if read_id(path) == mail_id), None)
    if path is None:
        raise ShopctlError(f"no e-mail {mail_id} in {directory}: `shopctl mail` lists them")
    return read_mail(path)


def read_id(path: Path) -> int:
    return int(path.stem)


def _local(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _document(stored: StoredMail, *, full: bool = False) -> dict[str, Any]:
    received = stored.received_at
    document: dict[str, Any] = {
        "id": stored.id,
        "received_at": received.isoformat() if received else None,
        "to": stored.recipients,
        "from": str(stored.message["From"] or ""),
        "subject": stored.subject,
        "message_id": str(stored.message["Message-ID"] or ""),
        "file": str(stored.path),
    }
    if full:
        document["date"] = str(stored.message["Date"] or "")
        document["text"] = stored.part("plain")
        document["html"] = stored.part("html")
    return document


def _shown(stored: StoredMail) -> Group:
    """Headers (name in bold), a blank line, and the plain-text part, control characters
    escaped; a note when there is no plain text."""
    lines = [Text(f"E-mail {stored.id}", style="bold"), Text(f"File: {stored.path}", style="dim")]
    received = stored.received_at
    lines.append(_header("Received", _local(received) if received else "-"))
    for name in SHOWN_HEADERS:
        value = stored.message[name]
        if value is not None:
            lines.append(_header(name, str(value)))
    parts = [part.get_content_type() for part in stored.message.walk() if not part.is_multipart()]
    lines.append(_header("Parts", ", ".join(parts)))
    lines.append(Text(""))
    body = stored.part("plain")
    if body is None:
        lines.append(Text("(no plain-text part: try --html)", style="dim"))
    else:
        lines.extend(Text(visible(line)) for line in body.rstrip("\n").splitlines())
    return Group(*lines)


def _header(name: str, value: str) -> Text:
    text = Text(f"{name}: ", style="bold")
    text.append(visible(value))
    return text
