"""Secrets come from a file of the node home or an environment variable, never esc.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from esc.config import ConfigError, read_secret

WHAT = "[vim.x] password_file / password_env"


def test_a_secret_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    assert read_secret(tmp_path, "pw", "", WHAT) == "s3cret"


def test_a_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 644\); chmod 600"):
        read_secret(tmp_path, "pw", "", WHAT)


def test_missing_or_empty_sources_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope"):
        read_secret(tmp_path, "nope", "", WHAT)
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(tmp_path, "empty", "", WHAT)
    monkeypatch.delenv("ESC_TEST_PW", raising=False)
    with pytest.raises(ConfigError, match="ESC_TEST_PW is not set"):
        read_secret(tmp_path, "", "ESC_TEST_PW", WHAT)
    monkeypatch.setenv("ESC_TEST_PW", "from-env")
    assert read_secret(tmp_path, "", "ESC_TEST_PW", WHAT) == "from-env"
    with pytest.raises(ConfigError, match=r"\[vim.x\] password_file / password_env: set one"):
        read_secret(tmp_path, "", "", WHAT)
