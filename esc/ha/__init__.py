"""High availability: an active/standby pair of nodes sharing a virtual IP."""
