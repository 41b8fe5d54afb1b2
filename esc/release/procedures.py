"""The seed's upgrade procedures as ordered steps, per method and VIM."""

from __future__ import annotations

import enum


class Method(enum.StrEnum):
    PACKAGE = "package"  # in place, standalone (the seed's "RPM upgrade")
    BACKUP_RESTORE = "backup_restore"
    IN_SERVICE_PACKAGE = "in_service_package"
    IN_SERVICE_IMAGE = "in_service_image"


# How each VIM deletes and powers off a controller VM (seed, per-VIM chapters).
POWER_OFF = {
    "openstack": "nova stop <vm>",
    "kvm": "virsh destroy <vm>",
    "vmware": "power off the VM in vSphere",
    "csp": "power off the service in CSP (switchover is automatic)",
    "local": "escadm stop on that node",
}
DELETE = {
    "openstack": "nova delete <vm>",
    "kvm": "virsh destroy <vm> && virsh undefine <vm>",
    "vmware": "power off, then Delete from Disk in vSphere",
    "csp": "power off and delete the service in CSP",
    "local": "remove the old node home (kept renamed until then)",
}
DEPLOY = {
    "openstack": "register the new qcow2 image in glance, then bootvm.py with the same parameters",
    "kvm": "define the new image's VM with the same parameters",
    "vmware": "deploy the new OVA with the same properties",
    "csp": "deploy the new image as a CSP service with the same parameters",
    "local": "install the new release into a new node home with the same esc.toml",
}


def procedure(method: Method, vim: str, target: str) -> dict[str, list[str]]:
    """Pre-checks, steps, verification and rollback for one method on one VIM."""
    prechecks = [
        "escadm health on every node: ESC HEALTH PASSED",
        "escadm backup --file esc-db.tar.bz2 on the active node; copy it off the node",
        "escadm log collect on every node; copy the archives off",
    ]
    verify = [
        f"escadm version: version {target}",
        "escadm health: ESC HEALTH PASSED",
        "escadm deployment list: every deployment is there and managed",
    ]
    if method is Method.PACKAGE:
        steps = ["escadm stop", f"install the {target} package", "escadm start"]
        rollback = ["escadm stop", "reinstall the previous package", "escadm start"]
    elif method is Method.BACKUP_RESTORE:
        steps = [
            f"{DEPLOY[vim]} (same VIP, addresses and host name)",
            "escadm stop on the new node (escadm status: ESC is stopped)",
            "escadm restore --file esc-db.tar.bz2 (scripts and dynamic mappings included)",
            "escadm start on the new node",
            f"delete the old instance: {DELETE[vim]}",
        ]
        rollback = ["stop the new instance", "start the old instance again (not yet deleted)"]
    elif method is Method.IN_SERVICE_PACKAGE:
        steps = [
            "on the standby: escadm stop (escadm status: ESC HA is stopped)",
            f"on the standby: install the {target} package, then escadm start",
            "on the active: escadm stop (fails over to the upgraded standby)",
            f"on the old active: install the {target} package, then escadm start",
        ]
        rollback = ["reinstall the previous package on each node, standby first"]
    else:
        steps = [
            f"delete the standby: {DELETE[vim]}",
            f"redeploy the standby: {DEPLOY[vim]} (same hostname, IP, gateway_ip, "
            "ha_node_list, kad_vip, kad_vif)",
            "wait for replication: drbdadm-style status shows peer-disk:UpToDate",
            "on the upgraded standby: escadm keepalived stop",
            "on the active: escadm op_mode set --mode=maintenance",
            "on the active: escadm ip_trans --wait (no transaction in progress)",
            "on the upgraded standby: escadm stop",
            f"power off the active: {POWER_OFF[vim]}",
            "on the upgraded node: escadm start (it takes the active role)",
            f"redeploy the old active as the new standby: {DEPLOY[vim]}",
            "wait for replication: peer-disk:UpToDate",
        ]
        rollback = [
            "quick: shut down the upgraded node and start the old active again",
            "full: redeploy the old version and escadm restore the backup",
        ]
    return {"prechecks": prechecks, "steps": steps, "verification": verify, "rollback": rollback}
