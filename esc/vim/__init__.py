"""VIM drivers: one interface, one module per VIM (local, later openstack, ...).

Kept free of imports: the local VIM's VNF program (vnf.py) lives here and
starts with the standard library only.
"""
