"""KPIs and rules: when a polled figure makes a KPI change state, and which
rule actions that state change calls for.

As in ESC: a KPI turns TRUE after `metric_occurrences_true` polls in a row
meet its condition and FALSE after `metric_occurrences_false` polls in a row
do not. Only the change fires (a VM that stays dead is recovered once, not
once per poll); a watcher that starts afresh (after a pause, a recovery or a
scaling) fires again for the state it finds.

A success/failure metric (ICMPPing) meets its condition when the VM answers;
a threshold metric when `value <metric_cond> metric_value` holds.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from esc.descriptor import rule_when

CONDITIONS: dict[str, Callable[[float, float], bool]] = {
    "GT": operator.gt,
    "GE": operator.ge,
    "LT": operator.lt,
    "LE": operator.le,
    "EQ": operator.eq,
}


def threshold_holds(kpi: dict[str, Any], value: float) -> bool:
    return CONDITIONS[kpi["metric_cond"]](value, float(kpi["metric_value"]))


@dataclass
class KpiState:
    """Consecutive outcomes of one KPI, and the state it last fired."""

    occurrences_true: int
    occurrences_false: int
    true_run: int = 0
    false_run: int = 0
    fired: bool | None = None

    def observe(self, holds: bool) -> bool | None:
        """Count one poll; the KPI's new state when this poll changes it, else None."""
        if holds:
            self.true_run, self.false_run = self.true_run + 1, 0
            if self.true_run >= self.occurrences_true and self.fired is not True:
                self.fired = True
                return True
        else:
            self.true_run, self.false_run = 0, self.false_run + 1
            if self.false_run >= self.occurrences_false and self.fired is not False:
                self.fired = False
                return False
        return None


def actions_for(rules: Iterable[dict[str, Any]], event_name: str, state: bool) -> list[str]:
    """The actions of the rules on `event_name` that a change to `state` calls, in order."""
    wanted = ("TRUE" if state else "FALSE", "ALWAYS")
    return [
        action
        for rule in rules
        if rule["event_name"] == event_name
        for action in rule["actions"]
        if rule_when(action) in wanted
    ]
