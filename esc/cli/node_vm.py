"""escadm node deploy | list | show | power-off | power-on | delete | fence: ESC's own
nodes, as VMs of a VIM or as the lab's namespaces."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from esc.cli.common import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    home_option,
    json_option,
    load_settings,
    print_json,
    print_table,
)
from esc.config import NodeHome

F = TypeVar("F", bound=Callable[..., Any])
LOCAL = "local"
# The VIMs ESC's nodes run on, named as their drivers are (besides the lab's `local`).
NODE_VIMS = ("openstack", "libvirt", "vmware", "csp")


@click.group("node")
def node_group() -> None:
    """ESC's own nodes: deploy, show, power off and on, fence, delete them.

    A node is a VM of a VIM, made from an ESC image with its escadm init
    parameters as its day-0 (its first boot runs escadm init, as bootvm.py's
    parameters say), tagged esc-nodes so that no controller takes it for one
    of its VNFs. --provider names the VIM's driver (openstack, libvirt, vmware,
    csp), whose settings are those of the VIM connection --vim (default: the
    [vim] of esc.toml); --provider local is the lab's host agent, whose nodes
    are network namespaces of its host (--agent, --agent-token-file; default:
    [ha] provider_url and provider_token_file).

    Exit codes: 0 done, 1 the provider refused (the reason is named), 2 bad
    options, an unknown provider or a driver whose SDK is missing, 3 the
    provider did not answer (ask again).
    """


def provider_options(func: F) -> F:
    @click.option(
        "--provider",
        metavar="NAME",
        help=f"{LOCAL} (the lab's host agent) or the VIM's driver: {', '.join(NODE_VIMS)}. "
        "Default: the driver of --vim.",
    )
    @click.option(
        "--vim",
        "vim_name",
        default="default",
        show_default=True,
        help="The VIM connection (escadm vim list) whose settings the driver takes; default: "
        "the [vim] of esc.toml.",
    )
    @click.option("--agent", "agent_url", help=f"--provider {LOCAL}: the lab agent's URL.")
    @click.option(
        "--agent-token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"--provider {LOCAL}: the file holding the lab agent's token.",
    )
    @home_option
    @json_option
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["choice"] = ProviderChoice(
            kwargs.pop("provider"),
            kwargs.pop("vim_name"),
            kwargs.pop("agent_url"),
            kwargs.pop("agent_token_file"),
        )
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class ProviderChoice:
    """The node provider the options name: --provider, --vim, --agent, --agent-token-file."""

    provider: str | None
    vim_name: str
    agent_url: str | None
    agent_token_file: Path | None


def _lab(home: NodeHome, url: str | None, token_file: Path | None) -> Any:
    from esc.ha.providers.lab import LabProvider

    if not (url and token_file) and home.exists():
        ha = load_settings(home).ha
        if ha.provider == "lab":
            url = url or ha.provider_url
            token_file = token_file or home.root / ha.provider_token_file
    if not (url and token_file):
        raise CliError(
            f"--provider {LOCAL} talks to the lab's host agent: give --agent URL and "
            "--agent-token-file FILE (or a node home whose [ha] provider is lab)",
            EXIT_USAGE,
        )
    return LabProvider(url, token_file)


def _connection(home: NodeHome, name: str) -> tuple[str, Any, str, Path]:
    """(driver, VimSettings, how the VIM is named, the driver's data directory) of VIM
    connection `name` of the node of `home`."""
    from esc.db.models import VimConnection
    from esc.db.session import Database
    from esc.engine.vims import DEFAULT, connection_settings
    from esc.vim.base import VimError

    settings = load_settings(home)
    nodes = home.data / "nodes"
    if name == DEFAULT:
        driver = settings.vim.driver
        return driver, settings.vim, f"the {driver} VIM of {home.config_file}", nodes
    # The row itself, from the node's database: no controller needs to run, and a
    # standby's read-only database has it too.
    db = Database(home.database_url(settings))
    try:
        with db.read() as session:
            row = session.get(VimConnection, name)
            found = (row.driver, dict(row.settings)) if row is not None else None
    except Exception as exc:  # the database's own words
        raise CliError(
            f"cannot read VIM connection {name!r} from the node's database: {exc}"
        ) from None
    finally:
        db.dispose()
    if found is None:
        raise CliError(
            f"there is no VIM connection {name!r}: see escadm vim list, or add it with "
            "escadm vim add",
            EXIT_USAGE,
        )
    try:
        vim_settings = connection_settings(*found)
    except VimError as exc:
        raise CliError(f"VIM connection {name!r}: {exc}", EXIT_USAGE) from None
    return found[0], vim_settings, f"the {found[0]} VIM of connection {name!r}", nodes / name


def _vim_provider(home: NodeHome, provider: str | None, vim_name: str) -> Any:
    from esc.ha.provider import NOT_NODE_VIMS, PermanentProviderError, node_vims
    from esc.ha.providers.vim import VimNodeProvider, node_driver

    installed = node_vims()
    if provider is not None and provider not in installed:
        if provider in NODE_VIMS:
            raise CliError(
                f"the {provider} VIM driver is not installed with this ESC (its node VIMs: "
                f"{', '.join(installed)})",
                EXIT_USAGE,
            )
        raise CliError(
            f"unknown node provider {provider!r}: give --provider {LOCAL} (the lab's host "
            f"agent) or a VIM driver: {', '.join(installed)}",
            EXIT_USAGE,
        )
    driver, settings, where, data_dir = _connection(home, vim_name)
    if provider is not None and provider != driver:
        raise CliError(
            f"VIM connection {vim_name!r} is a {driver} one, not {provider}: give --vim a "
            f"{provider} connection (escadm vim list), or leave --provider out",
            EXIT_USAGE,
        )
    if driver in NOT_NODE_VIMS:
        raise CliError(
            f"VIM connection {vim_name!r} is the {driver} VIM, whose VMs are processes of a "
            f"controller's host: it runs no node. Give --vim a connection of "
            f"{', '.join(NODE_VIMS)}, or --provider {LOCAL} for the lab's nodes",
            EXIT_USAGE,
        )
    try:
        return VimNodeProvider(node_driver(driver, settings, home.root, data_dir), where)
    except PermanentProviderError as exc:  # an unknown driver, a missing SDK, bad settings
        raise CliError(str(exc), EXIT_USAGE) from None


@contextmanager
def _provider(home: NodeHome, choice: ProviderChoice) -> Iterator[Any]:
    """The provider the options name, its errors as escadm's exit codes."""
    from esc.ha.provider import NodeSpecError, ProviderError, TransientProviderError

    if choice.provider == LOCAL:
        chosen = _lab(home, choice.agent_url, choice.agent_token_file)
    else:
        chosen = _vim_provider(home, choice.provider, choice.vim_name)
    try:
        yield chosen
    except NodeSpecError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except TransientProviderError as exc:
        raise CliError(f"{exc} (ask again)", EXIT_UNREACHABLE) from None
    except ProviderError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    finally:
        chosen.close()


def _show(status: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        print_json({**status.as_dict(), **(extra or {})})
        return
    click.echo(f"node {status.name}: {status.state.value}")
    for label, value in (
        ("ip", status.ip),
        ("floating ip", status.floating_ip),
        ("image", status.image),
        ("detail", status.detail),
    ):
        if value:
            click.echo(f"  {label}: {value}")
    for key, value in sorted(status.parameters.items()):
        if value not in ("", [], {}, None) and key not in ("image", "ip", "floating_ip"):
            click.echo(f"  {key}: {value}")


def _name_values(pairs: tuple[str, ...], option: str, example: str) -> tuple[tuple[str, str], ...]:
    options = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lstrip("-")
        if not sep or not name:
            raise CliError(f"{option} {pair!r}: write NAME=VALUE, e.g. {example}", EXIT_USAGE)
        options.append((name, value))
    return tuple(options)


@node_group.command("deploy")
@click.option("--image", required=True, help="The ESC image (the lab: a release, esc-1.2.0.1).")
@click.option("--name", required=True, help="The node's name, its host name too (hostname).")
@click.option("--flavor", default="", help="The VIM's flavor.")
@click.option("--network", default="", help="The VIM's network of the node's NIC.")
@click.option("--ip", default="", metavar="IP[/PREFIX]", help="The node's address (IP).")
@click.option("--gateway-ip", default="", metavar="IP", help="Its gateway (gateway_ip).")
@click.option(
    "--ha-node-list", default="", metavar="IP,IP", help="An HA node: the pair's two addresses."
)
@click.option("--kad-vip", default="", metavar="IP/PREFIX", help="An HA node: the pair's VIP.")
@click.option("--kad-vif", default="", metavar="IF", help="An HA node: the VIP's interface.")
@click.option("--floating-ip", default="", metavar="IP", help="A floating IP it keeps.")
@click.option(
    "--ha-pair-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An HA node that joins its pair (a redeployed one): the pair file, as day-0.",
)
@click.option(
    "--init-option",
    "init_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Another escadm init option for its first boot (api-port=8080); repeatable.",
)
@click.option(
    "--vim-setting",
    "vim_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A setting of the node's own VIM, [vim] of its esc.toml (driver=vimhost); repeatable.",
)
@provider_options
def deploy_command(
    image: str,
    name: str,
    flavor: str,
    network: str,
    ip: str,
    gateway_ip: str,
    ha_node_list: str,
    kad_vip: str,
    kad_vif: str,
    floating_ip: str,
    ha_pair_file: Path | None,
    init_pairs: tuple[str, ...],
    vim_pairs: tuple[str, ...],
    choice: ProviderChoice,
    home: NodeHome,
    as_json: bool,
) -> None:
    """Deploy node NAME from IMAGE and start it; its first boot runs escadm init with
    these parameters. A node of that name deployed alike is left as it is (exit 0);
    one with other parameters is refused: delete it first."""
    from esc.ha.provider import NodeSpec, NodeSpecError

    spec = NodeSpec(
        name=name,
        image=image,
        flavor=flavor,
        network=network,
        ip=ip,
        gateway_ip=gateway_ip,
        ha_node_list=tuple(a.strip() for a in ha_node_list.split(",") if a.strip()),
        kad_vip=kad_vip,
        kad_vif=kad_vif,
        floating_ip=floating_ip,
        init_options=_name_values(init_pairs, "--init-option", "api-port=8080"),
        vim_settings=_name_values(vim_pairs, "--vim-setting", "driver=vimhost"),
        ha_pair=ha_pair_file.read_text(encoding="utf-8") if ha_pair_file else "",
    )
    try:
        spec.check()
    except NodeSpecError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    with _provider(home, choice) as chosen:
        status = chosen.deploy(spec)
    if not as_json:
        click.echo(f"node {name} deployed on {chosen.where}")
    _show(status, as_json)


@node_group.command("list")
@provider_options
def list_command(
    choice: ProviderChoice,
    home: NodeHome,
    as_json: bool,
) -> None:
    """List the nodes of the provider (its VIM's node VMs)."""
    with _provider(home, choice) as chosen:
        nodes = chosen.nodes()
    if as_json:
        print_json([node.as_dict() for node in nodes])
        return
    if not nodes:
        click.echo("No nodes")
        return
    from rich.table import Table

    table = Table("NAME", "STATE", "IP", "FLOATING IP", "IMAGE", "DETAIL", box=None)
    for node in nodes:
        table.add_row(
            node.name,
            node.state.value,
            node.ip or "",
            node.floating_ip or "",
            node.image,
            node.detail,
        )
    print_table(table)


def _act(
    node: str,
    choice: ProviderChoice,
    home: NodeHome,
    as_json: bool,
    act: Callable[[Any], None],
    done: str,
) -> None:
    """Do `act` to node NAME with the chosen provider, say it is `done`, show the node."""
    with _provider(home, choice) as chosen:
        act(chosen)
        status = chosen.show(node)
    if not as_json:
        click.echo(f"node {node} {done}")
    _show(status, as_json)


def _one(name: str) -> Callable[[F], F]:
    """A command on one node NAME (its name, or its address)."""

    def decorate(func: F) -> F:
        return node_group.command(name)(click.argument("node", metavar="NAME")(func))

    return decorate


@_one("show")
@provider_options
def show_command(
    node: str,
    choice: ProviderChoice,
    home: NodeHome,
    as_json: bool,
) -> None:
    """Show node NAME: its state, addresses, image and the parameters it was deployed with."""
    with _provider(home, choice) as chosen:
        status = chosen.show(node)
    _show(status, as_json)


@_one("power-off")
@click.option(
    "--grace",
    type=click.FloatRange(0, 60),
    default=30.0,
    show_default=True,
    help="Seconds for its services to stop (on a VIM: its graceful stop) before it is "
    "powered off at once; 0: at once, as fence.",
)
@provider_options
def power_off_command(
    node: str,
    grace: float,
    choice: ProviderChoice,
    home: NodeHome,
    as_json: bool,
) -> None:
    """Power node NAME off, after a grace for its services to stop."""
    _act(node, choice, home, as_json, lambda chosen: chosen.power_off(node, grace), "powered off")


@_one("power-on")
@provider_options
def power_on_command(
    node: str,
    choice: ProviderChoice,
    home: NodeHome,
    as_json: bool,
) -> None:
    """Power node NAME on: it boots, and its services start."""
    _act(node, choice, home, as_json, lambda chosen: chosen.power_on(node), "powered on")


@_one("fence")
@provider_options
def fence_command(
    node: str,
    choice: ProviderChoice,
    home: NodeHome,
    as_json: bool,
) -> None:
    """Fence node NAME: power it off at once (its guest is not asked), and return only
    once the provider says it is off. Fencing a fenced node is not an error."""
    _act(node, choice, home, as_json, lambda chosen: chosen.fence(node), "fenced")


@_one("delete")
@provider_options
def delete_command(
    node: str,
    choice: ProviderChoice,
    home: NodeHome,
    as_json: bool,
) -> None:
    """Delete node NAME: power it off and remove it with its disks."""
    with _provider(home, choice) as chosen:
        chosen.delete(node)
    if as_json:
        print_json({"deleted": node})
    else:
        click.echo(f"node {node} deleted")
