"""Upgrade procedures that change the installed release (MISSION R-2, R-4)."""
