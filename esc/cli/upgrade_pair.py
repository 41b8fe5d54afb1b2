"""escadm upgrade in-service / status / rollback --pair: upgrading an HA pair."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from esc.cli.common import EXIT_FAILED, EXIT_USAGE, CliError, json_option, print_json
from esc.release.numbers import ReleaseNumber, ReleaseNumberError

EXIT_REFUSED = 3  # the planner or a pre-check refused: nothing was changed
EXIT_ROLLED_BACK = 4  # the upgrade rolled back by itself: the pair runs its old release
EXIT_UNFINISHED = 1  # status: an upgrade stands unfinished

pair_option = click.option(
    "--pair",
    "pair_spec",
    required=True,
    metavar="PAIR",
    help="The pair access file (TOML: vip, port, user, password_file, [[node]] name and "
    "address), or the two nodes' addresses A,B (then --vip, and $ESC_PASSWORD).",
)
vip_option = click.option("--vip", default="", help="The pair's VIP, with --pair A,B.")
state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the upgrade's record is kept (default: PAIRNAME.upgrade beside the pair "
    "file, or in the current directory).",
)


def _access(pair_spec: str, vip: str, vim: str = ""):
    from esc.upgrade.pair_access import PairAccessError, load_pair

    try:
        return load_pair(pair_spec, vip, vim)
    except PairAccessError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


class _Progress:
    """Live progress on a terminal (the step, its elapsed time, what the pair does now);
    plain lines on stderr otherwise."""

    def __init__(self, as_json: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = not as_json and self.console.is_terminal
        self.step = ""
        self.step_started = time.monotonic()
        self.started = time.monotonic()
        self._status = None

    def __call__(self, message: str) -> None:
        from esc.upgrade.in_service import step_titles

        if message in step_titles():
            if self.step:
                self.console.print(
                    f"[green]✓[/] {self.step} ({time.monotonic() - self.step_started:.1f} s)"
                    if self.live
                    else f"==> done: {self.step} ({time.monotonic() - self.step_started:.1f} s)",
                    highlight=False,
                )
            self.step, self.step_started = message, time.monotonic()
            if not self.live:
                self.console.print(f"==> {message}", highlight=False)
            now = ""
        else:
            now = message
            if not self.live:
                self.console.print(f"    {message}", highlight=False)
        if self._status is not None:
            self._status.update(
                f"{self.step}: {time.monotonic() - self.step_started:.0f} s "
                f"(upgrade {time.monotonic() - self.started:.0f} s){f' — {now}' if now else ''}"
            )

    @contextmanager
    def shown(self) -> Iterator[_Progress]:
        if not self.live:
            yield self
            return
        with self.console.status("starting") as status:
            self._status = status
            yield self
        self._status = None


def _print_checks(checks) -> None:
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        click.echo(f"  [{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            click.echo(f"         fix: {check.fix}")


def _print_record(record, as_json: bool) -> None:
    from esc.upgrade.report import report_of

    report = report_of(record)
    if as_json:
        print_json(report)
        return
    click.echo(
        f"Upgrade {report['source']} → {report['target']} ({report['method']}): {report['state']}"
    )
    for step in report["steps"]:
        seconds = f" {step['seconds']:.1f} s" if step["seconds"] is not None else ""
        click.echo(f"  {step['state']:8} {step['title']}{seconds}")
        if step["state"] == "failed" and step["detail"]:
            click.echo(f"           {step['detail']}")
    for line in report["summary"]:
        click.echo(line)


@click.command("in-service")
@pair_option
@vip_option
@click.option("--to", "target", required=True, help="The release to upgrade to, e.g. 1.3.0.2.")
@click.option(
    "--method",
    type=click.Choice(["package", "image"]),
    help="Default: what the upgrade planner chooses (package between patch builds).",
)
@click.option(
    "--releases",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default="releases",
    show_default=True,
    help="The directory of the release packages and their SHA256SUMS.",
)
@click.option(
    "--vim",
    default="",
    help="With --pair A,B: the VIM the nodes run on, for the planner (default local).",
)
@click.option(
    "--image",
    default="",
    metavar="NAME",
    help="--method image: the target release's image at the nodes' provider (default "
    "esc-TARGET, as the lab names its images).",
)
@state_dir_option
@click.option("--dry-run", is_flag=True, help="Check and print the steps; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before starting.")
@json_option
def in_service_command(
    pair_spec: str,
    vip: str,
    target: str,
    method: str | None,
    releases: Path,
    vim: str,
    image: str,
    state_dir: Path | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Upgrade an HA pair to TARGET with no transaction lost: standby first, then a
    planned switchover, then the old active.

    By package (between patch builds of one maintenance release) each node's package
    agent installs the new release. By image (across releases) each node is deployed
    again from the new image with its own parameters, through the node provider the
    pair access file names; the schema is migrated by the upgraded node as it takes
    the active role, the pair in MAINTENANCE meanwhile, and the old active stays
    powered off with its data until the new one is verified (the quick rollback).

    Pre-checks first; nothing changes unless all pass. Each step is recorded: run
    the same command again to continue an upgrade cut short (escadm upgrade status
    says where it stands). Exit 0 upgraded, 1 a step failed (the pair is left as the
    message says; run again to continue), 2 bad input, 3 refused by the planner or a
    pre-check (nothing changed), 4 rolled back by itself (the upgraded node failed as
    the active; the pair runs its old release).
    """
    from esc.upgrade.backup_restore import UpgradeError
    from esc.upgrade.in_service import StepFailed
    from esc.upgrade.journal import ROLLED_BACK, JournalError
    from esc.upgrade.pair_access import PairAccessError
    from esc.upgrade.pair_upgrade import Refused, dry_run_steps, run_in_service

    try:
        release = ReleaseNumber.parse(target)
    except ReleaseNumberError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    access = _access(pair_spec, vip, vim)
    progress = _Progress(as_json)
    if not dry_run and not yes and not as_json:
        click.confirm(
            f"Upgrade the pair {access.pair.name} ({access.pair.vip}) to {release}?", abort=True
        )
    try:
        with progress.shown():
            outcome = run_in_service(
                access, release, releases, method, state_dir, progress, dry_run=dry_run, image=image
            )
    except Refused as exc:
        if as_json:
            print_json({"refused": str(exc), "checks": [c.as_dict() for c in exc.checks]})
        elif exc.checks:
            _print_checks(exc.checks)
        raise CliError(str(exc), EXIT_REFUSED) from None
    except (UpgradeError, JournalError, PairAccessError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except StepFailed as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    if dry_run:
        _print_dry_run(outcome, dry_run_steps(outcome.record.method), as_json)
        return
    _print_record(outcome.record, as_json)
    if outcome.record.state == ROLLED_BACK:
        raise SystemExit(EXIT_ROLLED_BACK)


def _print_dry_run(outcome, steps: list[dict], as_json: bool) -> None:
    record = outcome.record
    if as_json:
        print_json(
            {
                "source": record.source,
                "target": record.target,
                "method": record.method,
                "checks": [c.as_dict() for c in outcome.checks],
                "steps": steps,
                "first": record.facts.get("first"),
            }
        )
        return
    if outcome.resumed:
        click.echo(
            f"An upgrade {record.source} → {record.target} is recorded, unfinished; "
            f"run without --dry-run to continue it from: "
            f"{record.current.title if record.current else 'the end'}"
        )
        return
    click.echo(f"Upgrade {record.source} → {record.target}, method {record.method}")
    click.echo("Pre-checks:")
    _print_checks(outcome.checks)
    click.echo(f"Steps (the standby {record.facts['first']} first):")
    for number, step in enumerate(steps, 1):
        click.echo(f"  {number}. {step['title']} (~{step['expected_s']} s): {step['effect']}")


@click.command("status")
@pair_option
@vip_option
@state_dir_option
@json_option
def status_command(pair_spec: str, vip: str, state_dir: Path | None, as_json: bool) -> None:
    """Where the pair's last upgrade stands, from its record: each step's state and
    time, the figures measured, a rollback. Exit 0 none or finished, 1 unfinished
    (run escadm upgrade in-service again to continue it), 2 bad input.
    """
    from esc.upgrade.journal import IN_PROGRESS, Journal, JournalError
    from esc.upgrade.pair_upgrade import state_dir_of

    access = _access(pair_spec, vip)
    directory = state_dir_of(access, state_dir)
    try:
        record = Journal.read(directory)
    except JournalError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if record is None:
        if as_json:
            print_json({"state": "none", "directory": str(directory)})
        else:
            click.echo(f"No upgrade recorded for the pair {access.pair.name} in {directory}")
        return
    _print_record(record, as_json)
    if record.state == IN_PROGRESS:
        raise SystemExit(EXIT_UNFINISHED)


def rollback_pair(
    pair_spec: str,
    vip: str,
    releases: Path,
    state_dir: Path | None,
    full: bool,
    as_json: bool,
) -> None:
    """`escadm upgrade rollback --pair`: see its help."""
    from esc.upgrade.backup_restore import UpgradeError
    from esc.upgrade.in_service import StepFailed
    from esc.upgrade.journal import JournalError
    from esc.upgrade.pair_access import PairAccessError
    from esc.upgrade.pair_upgrade import Refused, run_rollback

    access = _access(pair_spec, vip)
    progress = _Progress(as_json)
    try:
        with progress.shown():
            outcome = run_rollback(access, releases, state_dir, progress, full=full)
    except Refused as exc:
        raise CliError(str(exc), EXIT_REFUSED) from None
    except (UpgradeError, JournalError, PairAccessError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except StepFailed as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    _print_record(outcome.record, as_json)


def register(group: click.Group) -> None:
    group.add_command(in_service_command)
    group.add_command(status_command)
