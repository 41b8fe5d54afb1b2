"""The tagged log form: every component class maps a logger that exists, and
uvicorn's lines are tagged by what they are, not by its logger's odd name."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from esc.db.migrate import upgrade_to_head
from esc.db.session import Database
from esc.logtags import CLASS_OF_LOGGER, TaggedFormatter, component_class
from esc.monitor.mappings import install_defaults_if_empty


def _line(logger: str, level: int, message: str) -> str:
    record = logging.LogRecord(logger, level, __file__, 1, message, None, None)
    return TaggedFormatter().format(record)


def test_uvicorn_info_lines_are_not_tagged_error() -> None:
    line = _line("uvicorn.error", logging.INFO, "Uvicorn running on http://127.0.0.1:8080")
    assert "[loglevel=INFO]" in line
    assert "[cl=NBI][tags=uvicorn]" in line
    assert "tags=error" not in line


@pytest.mark.parametrize("prefix", sorted(CLASS_OF_LOGGER))
def test_every_component_class_names_a_real_module(prefix: str) -> None:
    assert importlib.util.find_spec(prefix) is not None, f"no module {prefix} logs there"


def test_dynamic_mapping_changes_are_logged_as_dynamic_mapping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'esc.db'}")
    try:
        upgrade_to_head(db.engine)
        with caplog.at_level(logging.INFO), db.write() as session:
            assert install_defaults_if_empty(session)
    finally:
        db.dispose()
    classes = {component_class(r.name) for r in caplog.records if "dynamic mappings" in r.message}
    assert classes == {"DYNAMIC_MAPPING"}
