"""vCenter's inventory as the VMware driver reads it: properties of many objects in one
request (the property collector over a container view), and the objects the settings
and a VM's spec name (datacenter, folders, clusters, hosts, resource pools, datastores,
networks, templates), each refused with the names vCenter does have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyVmomi import vim, vmodl

from esc.vim.base import PermanentVimError, UnknownImage

PC = vmodl.query.PropertyCollector


def properties(
    content: Any,
    kind: type,
    paths: list[str],
    *,
    objects: Iterable[Any] = (),
    under: Any = None,
    recursive: bool = True,
) -> list[tuple[Any, dict[str, Any]]]:
    """(object, {path: value}) for each object of `kind`: the `objects` given, or all those
    under the container `under` (a folder, datacenter or compute resource). A property
    vCenter leaves unset is absent from the dict."""
    view = None
    if under is not None:
        view = content.viewManager.CreateContainerView(under, [kind], recursive)
        traverse = PC.TraversalSpec(
            name="view", path="view", skip=False, type=vim.view.ContainerView
        )
        object_set = [PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])]
    else:
        object_set = [PC.ObjectSpec(obj=o) for o in objects]
        if not object_set:
            return []
    spec = PC.FilterSpec(objectSet=object_set, propSet=[PC.PropertySpec(type=kind, pathSet=paths)])
    try:
        found = []
        result = content.propertyCollector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
        while result is not None:
            found += [(o.obj, {p.name: p.val for p in o.propSet}) for o in result.objects]
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        return found
    finally:
        if view is not None:
            view.Destroy()


def _names(found: Iterable[tuple[Any, dict[str, Any]]]) -> str:
    names = sorted({props.get("name", "?") for _, props in found})
    return ", ".join(names) if names else "none"


def _one(found: list[tuple[Any, dict[str, Any]]], name: str, what: str, where: str) -> Any:
    """The one object named `name` among `found`, refused by name when none or several."""
    matches = {obj._moId: obj for obj, props in found if props.get("name") == name}
    if len(matches) == 1:
        return next(iter(matches.values()))
    if not matches:
        raise PermanentVimError(f"unknown {what} {name!r}; {where}'s are {_names(found)}")
    raise PermanentVimError(
        f"{len(matches)} {what}s are named {name!r} in {where}: rename all but one"
    )


class Inventory:
    """Lookups by name in the datacenter of [vim.vmware]; every miss names what is there."""

    def __init__(self, content: Any, datacenter: str) -> None:
        self.content = content
        self.datacenter = self._datacenter(datacenter)
        self.where = f"datacenter {self.datacenter.name!r}"

    def _datacenter(self, name: str) -> Any:
        found = properties(self.content, vim.Datacenter, ["name"], under=self.content.rootFolder)
        if name:
            return _one(found, name, "datacenter", "vCenter ([vim.vmware] datacenter)")
        if len(found) != 1:
            raise PermanentVimError(
                f"vCenter has {len(found)} datacenters ({_names(found)}): set "
                "[vim.vmware] datacenter to the one the VMs go to"
            )
        return found[0][0]

    def folder(self, path: str, setting: str) -> Any:
        """The VM folder at `path` below the datacenter's VM folder ('' is that folder)."""
        folder, walked = self.datacenter.vmFolder, "vm"
        for part in [p for p in path.split("/") if p]:
            children = properties(self.content, vim.Folder, ["name"], under=folder, recursive=False)
            try:
                folder = _one(children, part, "folder", f"folder {walked!r}")
            except PermanentVimError as exc:
                raise PermanentVimError(f"[vim.vmware] {setting} {path!r}: {exc}") from None
            walked = f"{walked}/{part}"
        return folder

    def compute(self, name: str) -> Any:
        """A cluster, or a standalone host's compute resource, by name."""
        found = properties(
            self.content, vim.ComputeResource, ["name"], under=self.datacenter.hostFolder
        )
        return _one(found, name, "cluster", self.where)

    def host(self, name: str, under: Any, where: str) -> Any:
        """An ESXi host by name, among those of `under` (a cluster, or the host folder)."""
        found = properties(self.content, vim.HostSystem, ["name"], under=under)
        return _one(found, name, "host", where)

    def resource_pool(self, path: str, compute: Any) -> Any:
        """The pool at `path` below `compute`'s root pool ('' is the root pool)."""
        pool, walked = compute.resourcePool, f"{compute.name}/Resources"
        for part in [p for p in path.split("/") if p]:
            children = properties(
                self.content, vim.ResourcePool, ["name"], objects=pool.resourcePool
            )
            try:
                pool = _one(children, part, "resource pool", f"pool {walked!r}")
            except PermanentVimError as exc:
                raise PermanentVimError(f"[vim.vmware] resource_pool {path!r}: {exc}") from None
            walked = f"{walked}/{part}"
        return pool

    def datastore(self, name: str) -> Any:
        found = properties(
            self.content, vim.Datastore, ["name"], under=self.datacenter.datastoreFolder
        )
        return _one(found, name, "datastore", self.where)

    def networks(self) -> list[tuple[Any, dict[str, Any]]]:
        return properties(self.content, vim.Network, ["name"], under=self.datacenter.networkFolder)

    def network(self, name: str, found: list[tuple[Any, dict[str, Any]]]) -> Any:
        return _one(found, name, "network", self.where)

    def images(self, templates_folder: str) -> list[tuple[Any, dict[str, Any]]]:
        """The VMs a VM may be cloned from: those in the templates folder, else every
        template of the datacenter."""
        if templates_folder:
            folder = self.folder(templates_folder, "templates_folder")
            return properties(
                self.content, vim.VirtualMachine, ["name"], under=folder, recursive=False
            )
        found = properties(
            self.content,
            vim.VirtualMachine,
            ["name", "config.template"],
            under=self.datacenter.vmFolder,
        )
        return [(vm, props) for vm, props in found if props.get("config.template")]

    def image(self, name: str, templates_folder: str) -> Any:
        found = self.images(templates_folder)
        matches = [vm for vm, props in found if props.get("name") == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UnknownImage(
                f"image {name!r} is ambiguous: {len(matches)} templates have that name in "
                f"{self.where}; rename all but one"
            )
        where = (
            f"templates folder {templates_folder!r}"
            if templates_folder
            else f"{self.where}'s templates"
        )
        raise UnknownImage(
            f"unknown image {name!r}; the vCenter's images are {_names(found)} (the {where})"
        )
