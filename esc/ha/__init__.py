"""High availability: an active/standby pair of nodes (PostgreSQL replication, its status)."""
