"""`shopctl mail` and the SMTP sink `shopctl up` runs: messages sent over real SMTP to the sink
process are kept as files and listed and shown; end to end, a checkout's e-mail."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support import eventually_sync, http, running_shop, shop_admin_token
from typer.testing import CliRunner

from shopctl import embedded
from shopctl.mailbox import mail_dir
from shopctl.main import app


def send(uri: str, to: str, subject: str, text: str, html: str | None = None) -> None:
    """One message over SMTP, as any program would send it."""
    message = EmailMessage()
    message["From"] = "Corner Shop <orders@shop.local>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    port = urlsplit(uri).port
    assert port is not None
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(message)


def mail(*args: str) -> str:
    result = CliRunner().invoke(app, ["mail", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_sink_keeps_what_it_is_sent_and_shopctl_mail_lists_and_shows_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "shop"
    sink = embedded.start_smtp_sink(mail_dir(data_dir), log_dir=tmp_path / "logs")
    try:
        send(sink.uri, "ann@example.com", "Your order #1 is placed", "Thanks, Ann.", "<p>Hi</p>")
        send(sink.uri, "bob@example.com", "Your order #2 is placed", "Thanks, Bob.\x1b[31m")
    finally:
        sink.stop()
    # Started again over the same folder, it numbers on.
    sink = embedded.start_smtp_sink(mail_dir(data_dir), log_dir=tmp_path / "logs")
    try:
        send(sink.uri, "ann@example.com", "Your order #1 is on its way", "On its way.")
    finally:
        sink.stop()

    listed = mail("--data-dir", str(data_dir))
    assert "Your order #1 is placed" in listed and "Your order #1 is on its way" in listed
    records = json.loads(mail("list", "--data-dir", str(data_dir), "-o", "json"))
    assert [(r["id"], r["to"], r["subject"]) for r in records] == [
        (1, "ann@example.com", "Your order #1 is placed"),
        (2, "bob@example.com", "Your order #2 is placed"),
        (3, "ann@example.com", "Your order #1 is on its way"),
    ]
    assert all(r["received_at"] and Path(r["file"]).is_file() for r in records)
    to_ann = json.loads(mail("--data-dir", str(data_dir), "--to", "ANN@", "-n", "1", "-o", "json"))
    assert [r["id"] for r in to_ann] == [3]

    shown = mail("show", "1", "--data-dir", str(data_dir))
    assert "Subject: Your order #1 is placed" in shown and "To: ann@example.com" in shown
    assert "Thanks, Ann." in shown and "text/plain, text/html" in shown
    assert mail("show", "1", "--html", "--data-dir", str(data_dir)).strip() == "<p>Hi</p>"
    # What a message holds reaches the terminal with its control characters escaped.
    assert "Thanks, Bob.\\x1b[31m" in mail("show", "2", "--data-dir", str(data_dir))
    last = json.loads(mail("show", "--last", "--data-dir", str(data_dir), "-o", "json"))
    assert last["id"] == 3 and last["text"].strip() == "On its way." and last["html"] is None

    refused = CliRunner().invoke(app, ["mail", "show", "9", "--data-dir", str(data_dir)])
    assert refused.exit_code == 1 and "no e-mail 9" in refused.output
    nothing = CliRunner().invoke(app, ["mail", "--data-dir", str(tmp_path / "none")])
    assert nothing.exit_code == 1 and "no e-mails kept in" in nothing.output


@pytest.mark.slow
def test_shopctl_up_runs_a_sink_and_shopctl_mail_shows_a_checkouts_email(tmp_path: Path) -> None:
    data_dir = tmp_path / "shop"
    with running_shop(data_dir) as (gateway, env):
        admin = shop_admin_token(gateway, data_dir)
        product = {"name": "Desk lamp", "description": "Warm light.", "price": 24.5}
        code, made = http(
            "POST", f"{gateway}/api/products", {**product, "category": "home", "stock": 5}, admin
        )
        assert code == 201, made
        account = {"email": "mia@example.com", "password": "mia-s3cret-enough"}
        code, registered = http("POST", f"{gateway}/api/users/register", account)
        assert code == 201, registered
        items = {"items": [{"product_id": made["data"]["id"], "quantity": 2}]}
        code, order = http("POST", f"{gateway}/api/orders", items, registered["data"]["token"])
        assert code == 201, order
        order_id = order["data"]["id"]

        def listed() -> list[dict]:
            result = CliRunner().invoke(
                app, ["mail", "--data-dir", str(data_dir), "-o", "json"], env={**env}
            )
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)

        eventually_sync(lambda: len(listed()) == 1, "the order's e-mail in the sink", seen=listed)
        (record,) = listed()
        assert record["to"] == "mia@example.com"
        assert record["subject"] == f"Your order #{order_id} is placed"
        shown = mail("show", "--last", "--data-dir", str(data_dir))
        assert "Desk lamp: 2 at $24.50 = $49.00" in shown
        assert f"{gateway}/orders/{order_id}" in shown
