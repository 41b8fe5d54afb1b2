"""Every setting and every escadm command is documented for operators."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import BaseModel

from esc.cli.main import cli
from esc.config import Settings

DOCS = Path(__file__).parents[1] / "docs"
GUIDE = (DOCS / "getting-started.md").read_text()
OPERATIONS = (DOCS / "operations.md").read_text()


def _setting_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _setting_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _commands(group: click.Group, prefix: str = "escadm") -> list[str]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix} {name}")
        else:
            found.append(f"{prefix} {name}")
    return found


def test_every_setting_is_documented() -> None:
    keys = _setting_keys(Settings)
    assert len(keys) >= 10
    missing = [key for key in keys if f"`{key}`" not in GUIDE]
    assert not missing, f"document these esc.toml keys in docs/getting-started.md: {missing}"


def test_every_command_is_documented() -> None:
    commands = _commands(cli)
    assert "escadm deployment deploy" in commands
    missing = [c for c in commands if f"`{c}" not in OPERATIONS]
    assert not missing, f"document these commands in docs/operations.md: {missing}"
