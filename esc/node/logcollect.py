"""`escadm log collect`: one archive with everything support asks for.

esc_log-<timestamp>.tar.bz2 (mode 0600) holds the node's logs, the output of
`status --v`, `health` and `version`, esc.toml with secrets redacted, and the
database schema revision. Written to a temporary name and renamed, so a
reader never sees half an archive.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

from esc.config import NodeHome, Settings
from esc.node.control import node_state, status_lines
from esc.node.health import node_checks
from esc.version import version_lines

DEFAULT_DIR = Path("/var/tmp")
REDACTED = "***"
_SECRET_KEY = re.compile(r"password|secret|token|credential", re.IGNORECASE)


def default_directory(home: NodeHome) -> Path:
    """/var/tmp as in ESC when it is writable, else the node's log/."""
    return DEFAULT_DIR if os.access(DEFAULT_DIR, os.W_OK) else home.log


def redacted_config(settings: Settings) -> str:
    """esc.toml as the node uses it, with passwords in URLs and secret keys hidden."""
    from sqlalchemy.engine import make_url

    # As esc.toml is saved: TOML has no null, and an unset [ha] address is None.
    data = settings.model_dump(mode="json", exclude_none=True)
    if data["database"]["url"]:
        # SQLAlchemy's own rendering shows the password as ***.
        data["database"]["url"] = make_url(data["database"]["url"]).render_as_string(
            hide_password=True
        )

    def scrub(section: dict) -> dict:
        return {
            k: (scrub(v) if isinstance(v, dict) else REDACTED if _SECRET_KEY.search(k) else v)
            for k, v in section.items()
        }

    return tomli_w.dumps(scrub(data))


def _schema_revision(home: NodeHome, settings: Settings) -> str:
    from esc.db.migrate import current_revision, head_revision
    from esc.db.session import Database

    db = Database(home.database_url(settings))
    try:
        return f"current: {current_revision(db.engine)}\nhead: {head_revision()}\n"
    except Exception as exc:  # the archive is most needed when the database is broken
        return f"unknown: {exc}\n"
    finally:
        db.dispose()


def _add_text(archive: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
    archive.addfile(info, io.BytesIO(data))


def collect_logs(home: NodeHome, settings: Settings, directory: Path | None = None) -> Path:
    directory = directory or default_directory(home)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    target = directory / f"esc_log-{stamp}.tar.bz2"
    prefix = target.name.removesuffix(".tar.bz2")
    status, _ = status_lines(node_state(home, settings), verbose=True)
    checks = node_checks(home, settings)
    health = ["ESC HEALTH PASSED" if all(c.ok for c in checks) else "ESC HEALTH FAILED"]
    health += [f"  {c.name}: {'ok' if c.ok else 'FAILED'}: {c.detail}" for c in checks]
    fd, tmp_name = tempfile.mkstemp(prefix=".esc_log-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:bz2") as archive:
            _add_text(archive, f"{prefix}/status.txt", "\n".join(status) + "\n")
            _add_text(archive, f"{prefix}/health.txt", "\n".join(health) + "\n")
            _add_text(archive, f"{prefix}/version.txt", "\n".join(version_lines()) + "\n")
            _add_text(archive, f"{prefix}/esc.toml", redacted_config(settings))
            _add_text(archive, f"{prefix}/schema_revision.txt", _schema_revision(home, settings))
            for path in sorted(home.log.iterdir()) if home.log.is_dir() else []:
                if path.is_file() and not path.is_symlink():
                    archive.add(path, arcname=f"{prefix}/log/{path.name}", recursive=False)
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
