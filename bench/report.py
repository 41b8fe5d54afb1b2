"""Writing a benchmark's dated section into docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(title: str, body: str) -> None:
    """Replace the section headed `## {title}` (or append it)."""
    heading = f"## {title}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    section = body.rstrip("\n").split("\n")
    if start is None:
        lines = [*lines[: len(lines) - (lines[-1] == "")], "", *section, ""]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = [*section, ""]
    BENCHMARKS.write_text("\n".join(lines))
