"""The code is ruff clean (lint and format), and the stylesheets parse whole, so CI fails
on style drift too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tinycss2

ROOT = Path(__file__).resolve().parent.parent


def ruff() -> str:
    found = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(found).exists():
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    return found


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args: list[str]) -> None:
    result = subprocess.run(
        [ruff(), *args, "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("sheet", sorted(ROOT.glob("svc_*/static/*.css")), ids=lambda p: p.name)
def test_every_stylesheet_parses_into_top_level_rules_only(sheet: Path) -> None:
    """A rule left open swallows every rule after it into itself (as nested rules that
    match nothing) and the browser says nothing: a merge did it once. Each rule must be a
    whole one at the top level or inside an at-rule, and nothing may fail to parse."""
    rules = tinycss2.parse_stylesheet(sheet.read_text(), skip_comments=True, skip_whitespace=True)
    errors = [rule for rule in rules if rule.type == "error"]
    assert errors == [], [f"line {error.source_line}: {error.message}" for error in errors]
    for rule in rules:
        if rule.type != "qualified-rule":
            continue
        body = tinycss2.parse_blocks_contents(
            rule.content, skip_comments=True, skip_whitespace=True
        )
        nested = [item for item in body if item.type in ("qualified-rule", "error")]
        where = tinycss2.serialize(rule.prelude).strip()
        assert nested == [], f"{sheet.name} line {rule.source_line}: {where} holds {nested[:1]}"
    assert len([rule for rule in rules if rule.type == "qualified-rule"]) > 50
