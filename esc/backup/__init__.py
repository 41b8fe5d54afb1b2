"""Backup and restore of a node's database (MISSION R-4)."""
