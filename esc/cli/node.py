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
    as_json: bool,
) -> None:
    """Create a node: esc.toml, data/, log/, run/, the database and the admin account.

    The admin password is printed once and stored only hashed.
    """
    from esc.node.setup import init_node

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
