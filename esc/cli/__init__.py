"""escadm: the node's administration tool (one module per command group)."""
