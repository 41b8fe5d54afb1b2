"""Release numbers, the release catalog, and the upgrade planner (MISSION R-2)."""
