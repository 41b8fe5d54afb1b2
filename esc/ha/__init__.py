"""High availability: an active/standby pair of nodes sharing a virtual IP (keepalived),
with streaming PostgreSQL replication between them."""
