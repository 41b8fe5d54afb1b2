"""Compressed files written on every core are standard files, and read back exactly;
a multi-stream bzip2 file is read on every core, a damaged one refused."""

from __future__ import annotations

import bz2
import random
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from esc.backup import compress
from esc.backup.compress import ParallelBz2Reader, ParallelCompressedWriter, open_decompressed


def sample(size: int) -> bytes:
    """Text-like data that compresses, different all along (a repeat would hide a mix-up)."""
    rng = random.Random(7)
    words = [bytes(rng.choices(b"abcdefghij\t\n", k=rng.randint(1, 12))) for _ in range(5000)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + str(len(out)).encode() + b"\n"
    return bytes(out[:size])


def write(path: Path, data: bytes, compression: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(compress, "CHUNK", 256 * 1024)  # several streams from a small sample
    with open(path, "wb") as out:
        writer = ParallelCompressedWriter(out, compression, workers=2)
        for at in range(0, len(data), 100_000):
            writer.write(data[at : at + 100_000])
        writer.close()
    return path


def read_all(path: Path, size: int = 10_240) -> bytes:
    stream = open_decompressed(str(path))
    try:
        parts = []
        while part := stream.read(size):
            assert len(part) <= size
            parts.append(part)
        return b"".join(parts)
    finally:
        stream.close()


@pytest.mark.parametrize("compression", ["bz2", "gz", "xz", ""])
def test_written_on_every_core_read_back_exactly(
    compression: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(2_000_000)
    path = write(tmp_path / "data", data, compression, monkeypatch)
    assert read_all(path) == data


def test_a_multi_stream_bzip2_file_is_read_in_parallel_and_bunzip2_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(2_000_000)
    path = write(tmp_path / "data.bz2", data, "bz2", monkeypatch)
    stream = open_decompressed(str(path))
    stream.close()
    assert isinstance(stream, ParallelBz2Reader)
    tool = subprocess.run(["bunzip2", "-c", str(path)], capture_output=True, check=True)
    assert tool.stdout == data


def test_a_single_stream_bzip2_file_is_read_as_usual(tmp_path: Path) -> None:
    data = sample(500_000)
    path = tmp_path / "one.bz2"
    path.write_bytes(bz2.compress(data))
    assert not isinstance(open_decompressed(str(path)), ParallelBz2Reader)
    assert read_all(path) == data


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda b: b[: len(b) // 2], EOFError),  # cut inside a stream
        (lambda b: b + b"trailing junk", OSError),
        (lambda b: b[:100] + bytes([b[100] ^ 0x10]) + b[101:], OSError),
    ],
    ids=["truncated", "trailing-junk", "flipped-bit"],
)
def test_a_damaged_multi_stream_bzip2_file_is_refused(
    damage, error: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "data.bz2", sample(2_000_000), "bz2", monkeypatch)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(error):
        read_all(path)


def test_a_stream_that_holds_far_more_than_a_chunk_is_read_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile file's second stream of zeros is decompressed CHUNK by CHUNK as it is
    read, never whole (it used to be held in memory at once, twice per worker)."""
    monkeypatch.setattr(compress, "CHUNK", 256 * 1024)
    zeros = 32 * 2**20
    compressor = bz2.BZ2Compressor()
    tail = b"".join(compressor.compress(bytes(2**20)) for _ in range(zeros // 2**20))
    path = tmp_path / "bomb.bz2"
    path.write_bytes(bz2.compress(sample(100_000)) + tail + compressor.flush())
    stream = open_decompressed(str(path))
    assert isinstance(stream, ParallelBz2Reader)
    tracemalloc.start()
    try:
        total = 0
        while part := stream.read(65_536):
            total += len(part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        stream.close()
    assert total == 100_000 + zeros
    assert peak < 4 * 2**20, f"{peak} bytes held while reading"
