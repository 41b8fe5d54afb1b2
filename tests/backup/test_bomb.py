"""A compression bomb: a tiny archive that decompresses to far more than its manifest
declares is refused as soon as it does, in bounded memory, the node unchanged."""

from __future__ import annotations

import bz2
import json
import subprocess
import sys
from pathlib import Path

from backup_helpers import DatabaseState, open_database, url_of
from conftest import ESCADM, Node

from esc.backup.dump import write_backup

BOMB_ZEROS = 200 * 2**20
MAX_RSS_MB = 150  # an idle escadm restore is about 70 MB; the bomb's stream is 200 MB

MEASURE = """
import json, resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(json.dumps({"rc": result.returncode, "stderr": result.stderr, "rss_mb": peak}))
"""


def zeros_stream(size: int) -> bytes:
    """One bzip2 stream of `size` zero bytes, compressed piece by piece (small here too)."""
    compressor = bz2.BZ2Compressor(9)
    piece = bytes(4 * 2**20)
    out = [compressor.compress(piece) for _ in range(size // len(piece))]
    return b"".join(out) + compressor.flush()


def restore_measured(node: Node, archive: Path, *options: str) -> dict:
    """`escadm restore` in a process of its own; its exit code, stderr and peak RSS."""
    command = [ESCADM, "restore", "--file", str(archive), *options, "--home", str(node.home.root)]
    wrapper = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True
    )
    return json.loads(wrapper.stdout)


def test_a_bzip2_stream_of_zeros_after_the_archive_is_refused_in_bounded_memory(
    node: Node, tmp_path: Path
) -> None:
    db = open_database(node)
    try:
        good = write_backup(db, tmp_path / "good.tar", "good").path
    finally:
        db.dispose()
    bomb = tmp_path / "bomb.tar.bz2"
    bomb.write_bytes(bz2.compress(good.read_bytes(), 9) + zeros_stream(BOMB_ZEROS))
    assert bomb.stat().st_size < 64 * 1024, "the bomb is a small file"
    url = url_of(node)
    before = DatabaseState.of(url)

    measured = restore_measured(node, bomb, "--allow-unsigned")

    assert measured["rc"] == 1, measured
    assert "decompresses to more than" in measured["stderr"], measured
    assert "compression bomb" in measured["stderr"]
    assert "Traceback" not in measured["stderr"]
    assert measured["rss_mb"] < MAX_RSS_MB, f"restore grew to {measured['rss_mb']} MB"
    before.assert_unchanged(url)
