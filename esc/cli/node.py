"""escadm init, escadm run."""

from __future__ import annotations

from pathlib import Path

import click

from esc.cli.common import EXIT_USAGE, CliError, home_option, json_option, load_settings, print_json
from esc.config import ConfigError, NodeHome, Settings, api_base_url


@click.command("init")
@home_option
@click.option("--api-port", type=click.IntRange(1, 65535), help="Port of the REST API (8080).")
@click.option("--api-host", help="Address the REST API listens on (127.0.0.1).")
@click.option(
    "--db-url",
    help="Database URL; default SQLite at data/esc.db in the home. "
    "PostgreSQL: postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB",
)
@click.option("--node-name", help="This node's name (default: the host name).")
@click.option(
    "--tls",
    "self_signed",
    is_flag=True,
    help="Serve the API over HTTPS with a new self-signed certificate (tls/ in the home).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve HTTPS with this PEM certificate (with --tls-key).",
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), help="The key of --tls-cert."
)
@click.option("--ha", is_flag=True, help="Make this node one of an active/standby pair.")
@click.option(
    "--ha-node-list",
    metavar="IP1,IP2",
    help="--ha: the two nodes' addresses; this node's own is the one found on --kad-vif.",
)
@click.option("--kad-vip", metavar="IP/PREFIX", help="--ha: the pair's virtual IP.")
@click.option("--kad-vif", metavar="IF", help="--ha: the interface that holds the VIP (eth0).")
@click.option("--gateway-ip", metavar="IP", help="--ha: the gateway keepalived tracks.")
@click.option(
    "--kad-vri", type=click.IntRange(1, 255), help="--ha: keepalived's virtual_router_id (50)."
)
@click.option(
    "--ha-pg-port", type=click.IntRange(1, 65535), help="--ha: the node's PostgreSQL port (5432)."
)
@click.option("--ha-provider", help="--ha: the node provider that fences a node (lab).")
@click.option("--ha-provider-url", help="--ha: where the node provider's API answers.")
@click.option("--ha-provider-token-file", help="--ha: the node provider's token file.")
@click.option(
    "--ha-bootstrap",
    is_flag=True,
    help="--ha: this node creates the pair's database, although its address is not the "
    "first of --ha-node-list.",
)
@click.option(
    "--ha-pair-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--ha: the pair file. An existing one: this node joins that pair. A new one: "
    "the node creating the pair's database writes it there too.",
)
@json_option
def init_command(
    home: NodeHome,
    api_port: int | None,
    api_host: str | None,
    db_url: str | None,
    node_name: str | None,
    self_signed: bool,
    tls_cert: str | None,
    tls_key: str | None,
    ha: bool,
    ha_node_list: str | None,
    kad_vip: str | None,
    kad_vif: str | None,
    gateway_ip: str | None,
    kad_vri: int | None,
    ha_pg_port: int | None,
    ha_provider: str | None,
    ha_provider_url: str | None,
    ha_provider_token_file: str | None,
    ha_bootstrap: bool,
    ha_pair_file: Path | None,
    as_json: bool,
) -> None:
    """Create a node: esc.toml, data/, log/, run/, the database and the admin account.

    The admin password is printed once and stored only hashed.

    \b
    An HA pair (--ha): run init on both hosts with the same --ha-node-list,
    --kad-vip, --kad-vif, --gateway-ip (and --kad-vri). Exactly one node
    creates the pair's database: the first address of --ha-node-list, or
    the node given --ha-bootstrap. A second database would split the pair
    into two that never replicate, so a node about to create it refuses
    when the peer's PostgreSQL answers already. That node writes the pair
    file (data/ha-pair.json, and --ha-pair-file FILE if given): the shared
    secrets (the escadm credential, the backup key, the replication
    secret). Copy it to the other host; its init joins with --ha-pair-file
    FILE and its database is cloned from the peer at its first start. A
    node given an existing pair file always joins, so the same command
    line redeploys either node. The API listens on 0.0.0.0 (the VIP comes
    and goes), the database is the node's own PostgreSQL.

    Exit codes: 0 created, 2 bad options or a node that cannot be created
    (the reason is named, nothing is left half made).
    """
    from esc.node.setup import init_node

    ha_options = {
        "--ha-node-list": ha_node_list,
        "--kad-vip": kad_vip,
        "--kad-vif": kad_vif,
        "--gateway-ip": gateway_ip,
        "--kad-vri": kad_vri,
        "--ha-pg-port": ha_pg_port,
        "--ha-provider": ha_provider,
        "--ha-provider-url": ha_provider_url,
        "--ha-provider-token-file": ha_provider_token_file,
        "--ha-bootstrap": ha_bootstrap or None,
        "--ha-pair-file": ha_pair_file,
    }
    if not ha:
        given = [name for name, value in ha_options.items() if value is not None]
        if given:
            raise CliError(f"{', '.join(given)} need --ha", EXIT_USAGE)
    raw: dict = {"api": {}, "database": {}, "node": {}}
    if api_port is not None:
        raw["api"]["port"] = api_port
    if api_host is not None:
        raw["api"]["host"] = api_host
    if db_url is not None:
        raw["database"]["url"] = db_url
    if node_name is not None:
        raw["node"]["name"] = node_name
    raw["api"].update(_tls_settings(home, self_signed, tls_cert, tls_key))
    if ha:
        _init_ha(home, raw, ha_options, self_signed, as_json)
        return
    try:
        settings = Settings.model_validate(raw)
    except Exception as exc:  # pydantic's message names the option's key
        raise CliError(f"invalid option: {exc}", EXIT_USAGE) from None
    try:
        result = init_node(home, settings, self_signed_tls=self_signed)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except Exception as exc:
        raise CliError(f"cannot create the node's database: {exc}", EXIT_USAGE) from None
    if as_json:
        print_json(
            {
                "home": str(home.root),
                "database": result.database_url,
                "admin_user": "admin",
                "admin_password": result.admin_password,
                "api_url": api_base_url(settings),
                "tls_cert": str(home.tls_files(settings)[0]) if settings.api.tls_cert else None,
            }
        )
        return
    click.echo(f"ESC node created in {home.root}")
    click.echo(f"database: {result.database_url}")
    click.echo(f"REST API: {settings.api.scheme}://{settings.api.host}:{settings.api.port}")
    if settings.api.tls_cert:
        click.echo(f"TLS certificate: {home.tls_files(settings)[0]}")
    if result.admin_password:
        click.echo(f"admin password (shown only this once): {result.admin_password}")
    else:
        click.echo("the database already has an admin account; its password is unchanged")


def _init_ha(home: NodeHome, raw: dict, options: dict, self_signed: bool, as_json: bool) -> None:
    """escadm init --ha: the [ha] section checked against this host, then the pair's
    database created or the pair joined (esc.node.ha_setup)."""
    from esc.ha.pgsql import Cluster
    from esc.node.ha_setup import BOOTSTRAP, ha_settings, init_ha_node
    from esc.tls import api_hosts, generate_self_signed

    missing = [o for o in ("--ha-node-list", "--kad-vip", "--gateway-ip") if not options[o]]
    if missing:
        raise CliError(f"--ha needs {', '.join(missing)}", EXIT_USAGE)
    if raw["database"]:
        raise CliError(
            "--db-url does not go with --ha: an HA node's database is its own PostgreSQL, "
            "replicated to the peer",
            EXIT_USAGE,
        )
    if raw["api"].get("host", "0.0.0.0") != "0.0.0.0":
        raise CliError(
            "--api-host does not go with --ha: the API listens on 0.0.0.0, since the VIP "
            "it must answer on comes and goes with the active role",
            EXIT_USAGE,
        )
    # Every address of the host: the VIP (present only while this node is active),
    # the node's own address (the peer and the operator reach it directly) and
    # loopback (escadm). The API asks for a login for everything but its health.
    raw["api"]["host"] = "0.0.0.0"
    ha_raw: dict = {"node_list": [a.strip() for a in options["--ha-node-list"].split(",")]}
    for option, key in (
        ("--kad-vip", "kad_vip"),
        ("--kad-vif", "kad_vif"),
        ("--gateway-ip", "gateway_ip"),
        ("--kad-vri", "kad_vri"),
        ("--ha-pg-port", "pg_port"),
        ("--ha-provider", "provider"),
        ("--ha-provider-url", "provider_url"),
        ("--ha-provider-token-file", "provider_token_file"),
    ):
        if options[option] is not None:
            ha_raw[key] = options[option]
    try:
        raw["ha"] = ha_settings(ha_raw).model_dump(mode="json", exclude_none=True)
        settings = Settings.model_validate(raw)
        settings.database.url = Cluster(home, settings.ha).database_url()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except Exception as exc:  # pydantic's or ipaddress's message names the value
        raise CliError(f"invalid option: {exc}", EXIT_USAGE) from None
    bootstrap = options["--ha-bootstrap"] or settings.ha.address == settings.ha.node_list[0]
    try:
        result = init_ha_node(
            home, settings, bootstrap=bool(bootstrap), pair_file=options["--ha-pair-file"]
        )
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if self_signed:
        generate_self_signed(*home.tls_files(settings), api_hosts(settings))
    peer = settings.ha.peer
    if as_json:
        print_json(
            {
                "home": str(home.root),
                "ha": result.how,
                "address": str(settings.ha.address),
                "peer": str(peer),
                "database": result.database_url,
                "admin_user": "admin",
                "admin_password": result.admin_password,
                "pair_files": [str(p) for p in result.pair_files],
                "api_url": api_base_url(settings),
            }
        )
        return
    click.echo(f"ESC HA node {settings.ha.address} created in {home.root}")
    click.echo(f"database: {result.database_url}")
    click.echo(
        f"REST API: {settings.api.scheme}://{settings.ha.kad_vip.ip}:{settings.api.port} "
        f"(the VIP) and {settings.api.scheme}://{settings.ha.address}:{settings.api.port}"
    )
    if result.how == BOOTSTRAP:
        click.echo(f"this node created the pair's database; pair file: {result.pair_files[-1]}")
        click.echo(
            f"copy it to {peer} (mode 0600), then there: escadm init --ha ... --ha-pair-file FILE"
        )
        click.echo(f"admin password (shown only this once): {result.admin_password}")
    else:
        click.echo(
            f"this node joined the pair; its database is cloned from {peer} at its first start"
        )
        click.echo("the admin account is the pair's: its password is unchanged")


def _tls_settings(
    home: NodeHome, self_signed: bool, cert: str | None, key: str | None
) -> dict[str, str]:
    """[api] tls_cert/tls_key for init's options; the operator's pair is checked first."""
    from esc.tls import CERT_FILE, KEY_FILE, TlsError, check_server_files

    if self_signed and (cert or key):
        raise CliError("give --tls, or --tls-cert with --tls-key, not both", EXIT_USAGE)
    if bool(cert) != bool(key):
        raise CliError("--tls-cert and --tls-key go together: give both", EXIT_USAGE)
    if self_signed:
        tls = home.tls_dir.relative_to(home.root)
        return {"tls_cert": str(tls / CERT_FILE), "tls_key": str(tls / KEY_FILE)}
    if not cert:
        return {}
    cert_path, key_path = Path(cert).absolute(), Path(key).absolute()
    try:
        check_server_files(cert_path, key_path)
    except TlsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return {"tls_cert": str(cert_path), "tls_key": str(key_path)}


@click.command("run")
@home_option
def run_command(home: NodeHome) -> None:
    """Run the controller in the foreground: REST API, transaction engine and monitoring
    (MONA) in one process. Ctrl-C or SIGTERM stops it gracefully."""
    from esc.node.escmanager import serve
    from esc.node.logs import setup_service_logging
    from esc.node.ports import PortInUse
    from esc.tls import TlsError

    settings = load_settings(home)
    setup_service_logging(home, "escmanager", tagged=True)
    try:
        serve(home, settings, with_mona=True)
    except TlsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except PortInUse as exc:
        raise CliError(str(exc)) from None


@click.command("passwd")
@home_option
@click.option("--user", default="admin", show_default=True, help="The account to reset.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the new password from the first line of stdin instead of generating one.",
)
@json_option
def passwd_command(home: NodeHome, user: str, password_stdin: bool, as_json: bool) -> None:
    """Reset an account's password (default: admin) by writing the node's database
    directly: no old password needed, the node may be running or stopped. Needs the
    node's files (root or the home's owner). A generated password is printed once.

    The old password stops working within 30 s on a running node.
    """
    from esc.node.accounts import AccountError, reset_password
    from esc.security import generate_password

    settings = load_settings(home)
    if password_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    else:
        password = generate_password()
    try:
        reset_password(home, settings, user, password)
    except AccountError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except Exception as exc:  # the database's own message says what is wrong
        raise CliError(f"cannot write the node's database: {exc}") from None
    shown = None if password_stdin else password
    if as_json:
        print_json({"user": user, "password": shown})
    elif shown:
        click.echo(f"{user} password reset (shown only this once): {shown}")
    else:
        click.echo(f"{user} password reset")
