"""The report of a pair's upgrade, from its record: for people and for scripts."""

from __future__ import annotations

from typing import Any

from esc.upgrade.journal import Record


def report_of(record: Record) -> dict[str, Any]:
    figures = record.figures
    ended = record.ended_at
    report: dict[str, Any] = {
        "id": record.id,
        "pair": record.pair,
        "method": record.method,
        "source": record.source,
        "target": record.target,
        "state": record.state,
        "started_at": record.started_at,
        "ended_at": ended,
        "seconds": round(ended - record.started_at, 1) if ended else None,
        "resumed": record.resumed,
        "steps": [
            {
                "name": s.name,
                "title": s.title,
                "state": s.state,
                "seconds": round(s.seconds, 3) if s.seconds is not None else None,
                "attempts": s.attempts,
                "detail": s.detail,
            }
            for s in record.steps
        ],
        "write_interruption_s": figures.get("write_interruption_s"),
        "switchover_s": figures.get("switchover_s"),
        "maintenance_s": figures.get("maintenance_s"),
        "migration": figures.get("migration"),
        "in_flight_at_switchover": figures.get("in_flight_at_switchover", []),
        "in_flight_states": figures.get("in_flight_states", {}),
        "transactions_during_upgrade": figures.get("transactions_during_upgrade", {}),
        "acknowledged_lost": figures.get("acknowledged_lost"),
        "versions_before": record.facts.get("versions_before", {}),
        "versions_after": record.facts.get("versions_after", {}),
        "rollback": record.rollback or "none",
        "error": record.error,
    }
    report["summary"] = _summary(report)
    return report


def _summary(report: dict[str, Any]) -> list[str]:
    lines = []
    if report["seconds"] is not None:
        lines.append(f"Whole upgrade: {report['seconds']:.1f} s")
    if report["write_interruption_s"] is not None:
        lines.append(
            f"Write interruption through the VIP: {report['write_interruption_s']:.3f} s "
            "(the longest time no active answered there)"
        )
    if report["switchover_s"] is not None:
        states = report["in_flight_states"]
        ended = ", ".join(f"{tx} {state}" for tx, state in states.items()) or "none"
        lines.append(
            f"Switchover: {report['switchover_s']:.3f} s; in flight at it: "
            f"{len(report['in_flight_at_switchover'])} ({ended})"
        )
    if report["maintenance_s"] is not None:
        migration = report["migration"] or {}
        ran = (
            f"the schema migrated {migration['from']} → {migration['to']} in "
            f"{migration['seconds']:.3f} s"
            if migration
            else "no schema migration"
        )
        lines.append(
            f"Writes refused (MAINTENANCE) for {report['maintenance_s']:.3f} s: the role "
            f"handed over, {ran}, the new active verified"
        )
    counts = report["transactions_during_upgrade"]
    if counts:
        total = sum(counts.values())
        by_state = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        lines.append(f"Transactions accepted during the upgrade: {total} ({by_state})")
    if report["acknowledged_lost"] is not None:
        lines.append(f"Acknowledged writes lost: {report['acknowledged_lost']}")
    for when in ("before", "after"):
        versions = report[f"versions_{when}"]
        if versions:
            shown = ", ".join(f"{a} {v}" for a, v in sorted(versions.items()))
            lines.append(f"Versions {when}: {shown}")
    lines.append(f"Rollback: {report['rollback']}")
    if report["error"] and report["state"] != "completed":
        lines.append(f"Stopped at: {report['error']}")
    return lines
