"""A node's files are its owner's alone: the database (and SQLite's -wal and -shm
beside it), the records under run/, the logs, the local VIM's instances. One umask,
set when a node process starts, before any of them is created, covers them all
(including what SQLite, the log handlers and child processes create)."""

from __future__ import annotations

import os

PRIVATE_UMASK = 0o077  # files 0600, directories 0700


def make_files_private() -> None:
    os.umask(PRIVATE_UMASK)
