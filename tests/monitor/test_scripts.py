"""Custom scripts: refused when unusable (over the API, nothing stored), run with the
event and nothing else in their environment, killed with their children at the
timeout, and run by MONA when a rule's SCRIPT action fires."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    MonaThread,
    Node,
    events,
    live_vm_processes,
    monitored_descriptor,
    recoveries,
    wait_for,
)
from fastapi.testclient import TestClient

from esc.monitor import scripts
from esc.monitor.actions import Firing
from esc.monitor.scripts import BASE_ENV, MAX_BYTES, OUTPUT_KEPT, materialise, run_script

GOOD = "#!/bin/sh\necho hello\n"


def problem(response, *words: str) -> str:
    """A 4xx problem+json whose detail names every one of `words`."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json", response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)
    return detail


def nothing_stored(api: TestClient, name: str | None = None) -> None:
    assert api.get("/v0/scripts").json() == []
    if name is not None and "/" not in name:
        assert api.get(f"/v0/scripts/{name}").status_code in (404, 422)


# (a) refusals and the round trip over the API ---------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        (".hidden", ["name"]),
        ("-dash", ["name"]),
        ("has space", ["name"]),
        ("x" * 129, ["name"]),
        ("tab%09name", ["name"]),
        ("newline%0A", ["name"]),
        ("semi;colon", ["name"]),
        ("%2E%2E", ["name"]),
    ],
)
def test_bad_name_is_refused(api: TestClient, name: str, words: list[str]) -> None:
    response = api.put(f"/v0/scripts/{name}", json={"content": GOOD, "timeout": 5})
    problem(response, *words)
    nothing_stored(api)


def test_a_name_with_a_slash_matches_no_script(api: TestClient) -> None:
    response = api.put("/v0/scripts/a%2Fb", json={"content": GOOD, "timeout": 5})
    problem(response)
    nothing_stored(api)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"content": "echo no interpreter\n"}, ["must start with an interpreter line", "#!"]),
        ({"content": ""}, ["must start with an interpreter line"]),
        ({"content": " #!/bin/sh\n"}, ["must start with an interpreter line"]),
        ({"content": "#!/bin/sh\necho \x00\n"}, ["NUL byte"]),
        ({"content": "#!/bin/sh\n" + "#" * MAX_BYTES}, ["content"]),  # too many characters
        ({"content": "#!/bin/sh\n#" + "é" * 140_000}, [f"larger than {MAX_BYTES} bytes"]),
        ({"content": GOOD, "timeout": 0}, ["timeout"]),
        ({"content": GOOD, "timeout": -1}, ["timeout"]),
        ({"content": GOOD, "timeout": 3600.5}, ["timeout"]),
        ({"content": GOOD, "timeout": 1e308}, ["timeout"]),
        ({"content": GOOD, "timeout": "soon"}, ["timeout"]),
        ({"content": GOOD, "timeout": None}, ["timeout"]),
        ({"timeout": 5}, ["content"]),
        ({"content": 42}, ["content"]),
        ({"content": GOOD, "owner": "root"}, ["owner"]),
    ],
)
def test_bad_body_is_refused_and_nothing_is_stored(
    api: TestClient, body: dict, words: list[str]
) -> None:
    response = api.put(
        "/v0/scripts/hook.sh",
        content=json.dumps(body, ensure_ascii=False).encode(),
        headers={"content-type": "application/json"},
    )
    problem(response, *words)
    nothing_stored(api, "hook.sh")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"content": "#!/bin/sh\\n", "timeout": NaN}',
        b'{"content": "#!/bin/sh\\n", "timeout": Infinity}',
        b'{"content": "#!/bin/sh\\n", "timeout": -Infinity}',
        b'{"content": "#!/bin/sh\\n\\ud800", "timeout": 5}',  # a lone surrogate: not text
        b'{"content": "#!/bin/sh\\n"',
        b"[]",
        b"",
        b"\xff\xfe",
    ],
)
def test_malformed_body_is_refused_never_a_5xx(api: TestClient, raw: bytes) -> None:
    response = api.put(
        "/v0/scripts/hook.sh", content=raw, headers={"content-type": "application/json"}
    )
    problem(response)
    nothing_stored(api, "hook.sh")


def test_a_refused_replacement_keeps_the_stored_script(api: TestClient) -> None:
    assert api.put("/v0/scripts/hook.sh", json={"content": GOOD, "timeout": 5}).status_code == 200
    problem(api.put("/v0/scripts/hook.sh", json={"content": "no #! here"}))
    problem(api.put("/v0/scripts/hook.sh", json={"content": GOOD, "timeout": 0}))
    shown = api.get("/v0/scripts/hook.sh").json()
    assert (shown["content"], shown["timeout"]) == (GOOD, 5)


def test_put_get_list_replace_delete_round_trip(api: TestClient) -> None:
    content = "#!/bin/sh\n# café ✓\nprintf '%s\\n' \"$ESC_VM_ID\"\n\ttabbed\r\nno newline at end"
    stored = api.put("/v0/scripts/servicebooted.sh", json={"content": content, "timeout": 5})
    assert stored.status_code == 200, stored.text
    view = stored.json()
    assert view["name"] == "servicebooted.sh" and view["timeout"] == 5
    assert view["size"] == len(content.encode()) and view["content"] is None

    shown = api.get("/v0/scripts/servicebooted.sh").json()
    assert shown["content"] == content and shown["size"] == view["size"]
    listed = api.get("/v0/scripts").json()
    assert [(s["name"], s["content"]) for s in listed] == [("servicebooted.sh", None)]

    assert api.put("/v0/scripts/a-first.py", json={"content": "#!/usr/bin/env python3\n"}).json()[
        "timeout"
    ] == pytest.approx(scripts.DEFAULT_TIMEOUT)
    assert [s["name"] for s in api.get("/v0/scripts").json()] == ["a-first.py", "servicebooted.sh"]

    replaced = api.put("/v0/scripts/servicebooted.sh", json={"content": GOOD, "timeout": 3600})
    assert replaced.status_code == 200 and replaced.json()["timeout"] == 3600
    assert api.get("/v0/scripts/servicebooted.sh").json()["content"] == GOOD

    assert api.delete("/v0/scripts/servicebooted.sh").status_code == 204
    problem(api.get("/v0/scripts/servicebooted.sh"), "escadm script import")
    assert api.delete("/v0/scripts/servicebooted.sh").status_code == 404
    assert [s["name"] for s in api.get("/v0/scripts").json()] == ["a-first.py"]


def test_the_largest_script_allowed_is_stored_whole(api: TestClient) -> None:
    content = "#!/bin/sh\n#" + "é" * ((MAX_BYTES - 11) // 2)
    content += "x" * (MAX_BYTES - len(content.encode()))
    assert len(content.encode()) == MAX_BYTES
    assert api.put("/v0/scripts/big.sh", json={"content": content}).status_code == 200
    assert api.get("/v0/scripts/big.sh").json()["content"] == content
    problem(api.put("/v0/scripts/big.sh", json={"content": content + "x"}), "larger than")


def test_missing_script_is_404_naming_the_import_command(api: TestClient) -> None:
    response = api.get("/v0/scripts/servicebooted.sh")
    assert response.status_code == 404
    problem(response, "servicebooted.sh", "escadm script import")
    assert api.delete("/v0/scripts/nope.sh").status_code == 404


def test_scripts_need_authentication(api: TestClient) -> None:
    bare = TestClient(api.app, raise_server_exceptions=False)
    assert bare.get("/v0/scripts").status_code == 401
    assert bare.put("/v0/scripts/x.sh", json={"content": GOOD}).status_code == 401
    assert bare.delete("/v0/scripts/x.sh").status_code == 401
    nothing_stored(api)


# (b) run_script with real processes --------------------------------------------------


def write_script(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.write_text(content)
    path.chmod(0o700)
    return path


def run(path: Path, env: dict[str, str], timeout: float) -> scripts.ScriptResult:
    return asyncio.run(asyncio.wait_for(run_script(path, env, timeout), 30))


DUMP_ENV = f"""#!{sys.executable}
import json, os
with open("env.json", "w") as out:
    json.dump(dict(os.environ), out)
"""


def test_script_sees_the_event_and_nothing_of_the_callers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESC_TEST_SECRET", "do-not-leak")
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    firing = Firing(
        event_name="VM_ALIVE",
        state=True,
        value=1.0,
        tenant="mon",
        deployment="web",
        vm_group="g",
        vm_id="vm-123",
        vm_name="web-g-0",
        address="http://127.0.0.1:4000",
    )
    env = firing.environment("TRUE servicebooted.sh")
    result = run(write_script(tmp_path, "dump.py", DUMP_ENV), env, 10)
    assert result.exit_code == 0, result.output
    seen = json.loads((tmp_path / "env.json").read_text())  # cwd: the script's directory
    assert seen == {**BASE_ENV, **env}
    assert seen["ESC_EVENT_STATE"] == "TRUE" and seen["ESC_VM_ID"] == "vm-123"
    assert seen["ESC_ACTION"] == "TRUE servicebooted.sh" and seen["ESC_METRIC_VALUE"] == "1"
    assert "ESC_TEST_SECRET" not in seen and "DATABASE_PASSWORD" not in seen
    assert "do-not-leak" not in json.dumps(seen)


def test_a_group_firing_has_no_vm_variables() -> None:
    firing = Firing("VM_LOAD", False, 12.5, "mon", "web", "g")
    env = firing.environment("ALWAYS log")
    assert env["ESC_EVENT_STATE"] == "FALSE" and env["ESC_METRIC_VALUE"] == "12.5"
    assert not {"ESC_VM_ID", "ESC_VM_NAME", "ESC_VM_ADDRESS"} & set(env)


def test_exit_code_and_output_are_captured(tmp_path: Path) -> None:
    path = write_script(
        tmp_path, "fail.sh", '#!/bin/sh\necho "out $ESC_VM_ID"\necho err >&2\nexit 3\n'
    )
    result = run(path, {"ESC_VM_ID": "vm-9"}, 10)
    assert result.exit_code == 3
    assert result.output == "out vm-9\nerr\n"  # stderr goes with stdout
    assert result.name == "fail.sh" and 0 <= result.seconds < 10


def test_only_the_end_of_a_long_output_is_kept(tmp_path: Path) -> None:
    path = write_script(
        tmp_path, "chatty.sh", "#!/bin/sh\nhead -c 100000 /dev/zero | tr '\\0' x\necho END\n"
    )
    result = run(path, {}, 10)
    assert result.exit_code == 0
    assert len(result.output) == OUTPUT_KEPT and result.output.endswith("xxxEND\n")


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        "hang.sh",
        '#!/bin/sh\nsleep 60 &\necho "$$ $!" > pids\necho started\nwait\n',
    )
    started = time.monotonic()
    result = run(path, {}, 1)
    elapsed = time.monotonic() - started
    assert result.exit_code is None
    # Had only the shell been killed, its child would hold the output pipe for 60 s.
    assert 1 <= elapsed < 10, elapsed
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    wait_for(lambda: not any(alive(pid) for pid in pids), 5, f"{pids} all gone")


def test_output_written_before_the_timeout_is_kept(tmp_path: Path) -> None:
    path = write_script(tmp_path, "slow.sh", "#!/bin/sh\necho started\nexec sleep 60\n")
    result = run(path, {}, 1)
    assert result.exit_code is None
    assert result.output == "started\n"  # what MONA logs about a script it had to kill


def test_a_script_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    path = write_script(tmp_path, "nointerp.sh", "#!/no/such/interpreter\n")
    with pytest.raises(OSError):
        run(path, {}, 5)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_materialise_writes_a_private_file_only_when_it_changed(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "scripts"
    path = materialise(directory, "s.sh", GOOD)
    assert path == directory / "s.sh" and path.read_text() == GOOD
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    inode = path.stat().st_ino
    assert materialise(directory, "s.sh", GOOD).stat().st_ino == inode  # unchanged: kept
    changed = materialise(directory, "s.sh", GOOD + "exit 4\n")
    assert changed.read_text() == GOOD + "exit 4\n" and changed.stat().st_ino != inode
    assert sorted(p.name for p in directory.iterdir()) == ["s.sh"]  # no temporary left


# (c) MONA runs a rule's script ------------------------------------------------------

POLL = 0.4


def descriptor(name: str, actions: list[str], count: int = 1) -> str:
    return monitored_descriptor(name, actions, poll=POLL, wait=5, count=count)


def recording_script(log: Path) -> str:
    """A script that appends its ESC_* environment to `log`, one JSON line per run."""
    return f"""#!{sys.executable}
import json, os
line = json.dumps({{k: v for k, v in os.environ.items() if k.startswith("ESC_")}})
with open({str(log)!r}, "a") as out:
    out.write(line + "\\n")
"""


def runs(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def deploy(api: TestClient, text: str) -> dict:
    response = api.post(
        "/v0/deployments", content=text, headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 202, response.text
    tx_id = response.json()["transaction_id"]
    wait_for(
        lambda: api.get(f"/v0/transactions/{tx_id}").json()["state"] in ("SUCCESS", "FAILED"),
        30,
        "deployed",
    )
    assert api.get(f"/v0/transactions/{tx_id}").json()["state"] == "SUCCESS"
    return api.get(f"/v0/tenants/mon/deployments/{text.split('name: ', 1)[1].split()[0]}").json()


def recent_actions(api: TestClient) -> list[str]:
    status = api.get("/esc/monitoring").json()["status"]
    return status["recent_actions"] if status else []


def test_script_runs_once_per_vm_when_it_comes_alive(
    api: TestClient, mona: MonaThread, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    stored = api.put(
        "/v0/scripts/servicebooted.sh", json={"content": recording_script(log), "timeout": 10}
    )
    assert stored.status_code == 200, stored.text
    shown = deploy(api, descriptor("booted", ["TRUE servicebooted.sh"], count=2))
    vms = {vm["id"]: vm for vm in shown["vm_groups"][0]["vms"]}
    assert len(vms) == 2

    wait_for(lambda: len(runs(log)) >= 2, 15, "the script ran for both VMs")
    time.sleep(5 * POLL)  # more polls: the KPI stays TRUE, nothing fires again
    found = runs(log)
    assert sorted(r["ESC_VM_ID"] for r in found) == sorted(vms), found
    for run_env in found:
        vm = vms[run_env["ESC_VM_ID"]]
        assert run_env == {
            "ESC_ACTION": "TRUE servicebooted.sh",
            "ESC_EVENT_NAME": "VM_ALIVE",
            "ESC_EVENT_STATE": "TRUE",
            "ESC_TENANT": "mon",
            "ESC_DEPLOYMENT": "booted",
            "ESC_VM_GROUP": "g",
            "ESC_METRIC_VALUE": "1",
            "ESC_VM_ID": vm["id"],
            "ESC_VM_NAME": vm["name"],
            "ESC_VM_ADDRESS": vm["address"],
        }
    wait_for(
        lambda: sum("script servicebooted.sh exited 0" in a for a in recent_actions(api)) == 2,
        5,
        "MONA reports both runs",
    )


def test_script_runs_again_after_a_recovery(
    api: TestClient, node: Node, mona: MonaThread, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    api.put("/v0/scripts/servicebooted.sh", json={"content": recording_script(log)})
    shown = deploy(
        api,
        descriptor("again", ["TRUE servicebooted.sh", "FALSE recover autohealing"]),
    )
    (vm,) = shown["vm_groups"][0]["vms"]
    wait_for(lambda: len(runs(log)) == 1, 15, "the script ran when the VM came alive")

    (proc,) = [p for p in live_vm_processes(node.home) if vm["id"] in " ".join(p.cmdline())]
    os.kill(proc.pid, signal.SIGKILL)
    wait_for(lambda: [t["state"] for t in recoveries(api)] == ["SUCCESS"], 30, "one recovery, done")
    wait_for(lambda: len(runs(log)) == 2, 15, "the script ran again after the recovery")
    time.sleep(5 * POLL)
    found = runs(log)
    assert [(r["ESC_VM_ID"], r["ESC_EVENT_STATE"]) for r in found] == [(vm["id"], "TRUE")] * 2
    assert len(recoveries(api)) == 1
    assert len(events(api, "VM_RECOVERY_INIT")) == 1


def test_missing_or_hanging_script_is_reported_not_fatal(
    api: TestClient, mona: MonaThread, tmp_path: Path
) -> None:
    deploy(api, descriptor("noscript", ["TRUE servicebooted.sh"]))
    wait_for(
        lambda: any(
            "script 'servicebooted.sh' not run" in a and "escadm script import" in a
            for a in recent_actions(api)
        ),
        15,
        "MONA says the script is missing",
    )
    # A script that outlives its timeout is killed and reported; MONA keeps going.
    pids = tmp_path / "pids"
    hanging = f'#!/bin/sh\nsleep 60 &\necho "$$ $!" > {pids}\nwait\n'
    api.put("/v0/scripts/servicebooted.sh", json={"content": hanging, "timeout": 1})
    deploy(api, descriptor("hangs", ["TRUE servicebooted.sh"]))
    wait_for(
        lambda: any("killed after its timeout of 1 s" in a for a in recent_actions(api)),
        15,
        "MONA reports the killed script",
    )
    wait_for(
        lambda: pids.exists() and not any(alive(int(p)) for p in pids.read_text().split()),
        5,
        "the script and its child are gone",
    )
    status = api.get("/esc/monitoring").json()
    assert status["service"]["running"] and status["status"]["watched_vms"] == 2
