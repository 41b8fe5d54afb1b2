"""KPI state changes, rule action selection, thresholds, and the HTTP probe MONA polls
with: response parsing and a kept-alive connection against a real socket server."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from conftest import free_port
from hypothesis import given
from hypothesis import strategies as st

from esc.monitor.kpis import KpiState, actions_for, threshold_holds
from esc.monitor.probe import MAX_RESPONSE, HttpProbe, ProbeError, _parse

# KpiState ------------------------------------------------------------------------


def feed(state: KpiState, outcomes: list[bool]) -> list[bool | None]:
    return [state.observe(holds) for holds in outcomes]


def test_turns_true_once_after_occurrences_true_in_a_row() -> None:
    state = KpiState(occurrences_true=3, occurrences_false=2)
    assert feed(state, [True, True]) == [None, None]
    assert state.observe(True) is True
    assert feed(state, [True] * 10) == [None] * 10  # stays TRUE: no re-fire


def test_turns_false_once_after_occurrences_false_in_a_row() -> None:
    state = KpiState(occurrences_true=1, occurrences_false=3)
    assert state.observe(True) is True
    assert feed(state, [False, False, False]) == [None, None, False]
    assert feed(state, [False] * 10) == [None] * 10  # a VM that stays dead: fired once


def test_false_can_fire_first_from_a_fresh_state() -> None:
    state = KpiState(occurrences_true=1, occurrences_false=2)
    assert feed(state, [False, False]) == [None, False]


def test_an_interrupted_run_starts_counting_again() -> None:
    state = KpiState(occurrences_true=3, occurrences_false=3)
    # Two trues, a false, two trues: never three in a row, so nothing fires.
    assert feed(state, [True, True, False, True, True]) == [None] * 5
    assert state.observe(True) is True
    # Two falses, a true (keeps TRUE, fires nothing), two falses, then the third.
    assert feed(state, [False, False, True, False, False]) == [None] * 5
    assert state.observe(False) is False


def test_back_and_forth_fires_each_change_once() -> None:
    state = KpiState(occurrences_true=1, occurrences_false=1)
    assert feed(state, [True, True, False, False, True, False]) == [
        True,
        None,
        False,
        None,
        True,
        False,
    ]


def reference(outcomes: list[bool], need_true: int, need_false: int) -> list[bool | None]:
    """An independent model: a state fires when a run of its outcome reaches exactly its
    count, unless that state is the one fired last."""
    fired: list[bool | None] = []
    last: bool | None = None
    run_value: bool | None = None
    run_length = 0
    for holds in outcomes:
        run_length = run_length + 1 if holds == run_value else 1
        run_value = holds
        need = need_true if holds else need_false
        if run_length == need and last is not holds:
            fired.append(holds)
            last = holds
        else:
            fired.append(None)
    return fired


@given(
    outcomes=st.lists(st.booleans(), max_size=200),
    need_true=st.integers(1, 6),
    need_false=st.integers(1, 6),
)
def test_kpi_state_matches_the_reference_model(
    outcomes: list[bool], need_true: int, need_false: int
) -> None:
    state = KpiState(need_true, need_false)
    fired = feed(state, outcomes)
    assert fired == reference(outcomes, need_true, need_false)
    changes = [f for f in fired if f is not None]
    assert all(a != b for a, b in itertools.pairwise(changes)), changes
    # TRUE fires exactly when a run of need_true trues completes while not TRUE already.
    for index, value in enumerate(fired):
        run = outcomes[max(0, index - need_true + 1) : index + 1]
        completes = len(run) == need_true and all(run)
        before = [f for f in fired[:index] if f is not None]
        assert (value is True) == (completes and (not before or before[-1] is not True))


# actions_for ---------------------------------------------------------------------

RULES = [
    {"event_name": "VM_ALIVE", "actions": ["TRUE a", "FALSE b", "ALWAYS c", "TRUE d"]},
    {"event_name": "VM_LOAD", "actions": ["TRUE other", "ALWAYS other-always"]},
    {"event_name": "VM_ALIVE", "actions": ["FALSE e", "ALWAYS  f"]},
]


def test_actions_for_true_keeps_order_and_always() -> None:
    assert actions_for(RULES, "VM_ALIVE", True) == ["TRUE a", "ALWAYS c", "TRUE d", "ALWAYS  f"]


def test_actions_for_false_keeps_order_and_always() -> None:
    assert actions_for(RULES, "VM_ALIVE", False) == ["FALSE b", "ALWAYS c", "FALSE e", "ALWAYS  f"]


def test_actions_for_ignores_other_event_names() -> None:
    assert actions_for(RULES, "VM_LOAD", False) == ["ALWAYS other-always"]
    assert actions_for(RULES, "NO_SUCH_KPI", True) == []
    assert actions_for([], "VM_ALIVE", True) == []


def test_actions_for_matches_the_first_word_only() -> None:
    rules = [{"event_name": "E", "actions": ["TRUEISH x", "FALSE", "ALWAYS", "true y"]}]
    assert actions_for(rules, "E", True) == ["ALWAYS"]
    assert actions_for(rules, "E", False) == ["FALSE", "ALWAYS"]


# threshold_holds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "below", "equal", "above"),
    [
        ("GT", False, False, True),
        ("GE", False, True, True),
        ("LT", True, False, False),
        ("LE", True, True, False),
        ("EQ", False, True, False),
    ],
)
def test_threshold_holds(cond: str, below: bool, equal: bool, above: bool) -> None:
    kpi = {"metric_cond": cond, "metric_value": 80}
    assert threshold_holds(kpi, 79.5) is below
    assert threshold_holds(kpi, 80.0) is equal
    assert threshold_holds(kpi, 80) is equal
    assert threshold_holds(kpi, 80.5) is above


def test_threshold_value_may_be_a_string_or_float() -> None:
    assert threshold_holds({"metric_cond": "GT", "metric_value": "20.5"}, 21)
    assert not threshold_holds({"metric_cond": "LT", "metric_value": 0.5}, 0.5)


# _parse --------------------------------------------------------------------------


def response(body: bytes = b'{"ok": true}', status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_parse_a_complete_response() -> None:
    data = response(Content_Length="12")
    assert _parse(bytearray(data)) == (200, b'{"ok": true}', len(data), True)


def test_parse_leaves_what_follows_for_the_next_response() -> None:
    first = response(b"{}", status="503 Service Unavailable", Content_Length="2")
    second = response(b"[1]", Content_Length="3")
    status, body, used, keep_alive = _parse(bytearray(first + second))
    assert (status, body, used, keep_alive) == (503, b"{}", len(first), True)
    assert _parse(bytearray((first + second)[used:]))[:2] == (200, b"[1]")


def test_parse_an_incomplete_response_waits_for_more() -> None:
    data = response(Content_Length="12")
    for cut in range(len(data)):
        assert _parse(bytearray(data[:cut])) is None, cut
    assert _parse(bytearray(data)) is not None


def test_parse_without_content_length_is_an_empty_body() -> None:
    data = response(b"")
    assert _parse(bytearray(data)) == (200, b"", len(data), True)


@pytest.mark.parametrize(
    "length",
    [str(MAX_RESPONSE + 1), "99999999999999999999", "-1", "abc", "12 34", ""],
)
def test_parse_refuses_an_unusable_content_length(length: str) -> None:
    with pytest.raises(ProbeError, match="Content-Length"):
        _parse(bytearray(response(Content_Length=length)))


def test_parse_accepts_content_length_up_to_the_limit() -> None:
    body = b"x" * MAX_RESPONSE
    assert _parse(bytearray(response(body, Content_Length=str(MAX_RESPONSE))))[1] == body


@pytest.mark.parametrize(
    "head",
    [
        b"garbage",
        b"SSH-2.0-OpenSSH_9.6",
        b"HTTP/2 200",
        b"HTTP/1.1",
        b"HTTP/1.1 OK 200",
        b"",
        b"\x00\x01\x02",
    ],
)
def test_parse_refuses_a_garbage_status_line(head: bytes) -> None:
    with pytest.raises(ProbeError, match="not an HTTP response"):
        _parse(bytearray(head + b"\r\nContent-Length: 0\r\n\r\n"))


def test_parse_refuses_an_endless_header() -> None:
    data = bytearray(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * (MAX_RESPONSE + 10))
    with pytest.raises(ProbeError, match="header too large"):
        _parse(data)


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Close", False),
        ("HTTP/1.1", "keep-alive", True),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "Keep-Alive", True),
    ],
)
def test_parse_connection_header(version: str, connection: str | None, keep_alive: bool) -> None:
    head = f"{version} 200 OK\r\nContent-Length: 2\r\n"
    if connection:
        head += f"Connection: {connection}\r\n"
    assert _parse(bytearray(head.encode() + b"\r\n{}"))[3] is keep_alive


@given(st.binary(max_size=300))
def test_parse_of_any_bytes_answers_waits_or_refuses(data: bytes) -> None:
    try:
        parsed = _parse(bytearray(data))
    except (ProbeError, ValueError):  # the connection turns ValueError into ProbeError
        return
    if parsed is not None:
        status, body, used, _ = parsed
        assert status >= 0 and used <= len(data) and data[used - len(body) : used] == body


# HttpProbe against a real server --------------------------------------------------


class Server:
    """A tiny HTTP/1.1 server on 127.0.0.1 whose behaviour a test chooses per request."""

    def __init__(self, answer) -> None:
        self.answer = answer  # (connection number, request number) -> bytes | None
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        self.writers.append(writer)
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests += 1
                data = self.answer(connection, self.requests)
                if data is None:
                    continue  # never answers this one
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def json_response(value: object, *, close: bool = False) -> bytes:
    body = json.dumps(value).encode()
    extra = "Connection: close\r\n" if close else ""
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def run(coroutine) -> object:
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def test_probe_reuses_one_kept_alive_connection() -> None:
    async def scenario() -> None:
        async with Server(lambda conn, n: json_response({"poll": n, "conn": conn})) as server:
            probe = HttpProbe(server.address)
            answers = [await probe.get_json("/health", 2) for _ in range(5)]
            probe.close()
        assert answers == [(200, {"poll": n, "conn": 1}) for n in range(1, 6)]
        assert server.connections == 1

    run(scenario())


def test_probe_opens_a_new_connection_after_connection_close() -> None:
    async def scenario() -> None:
        async with Server(lambda conn, n: json_response({"conn": conn}, close=True)) as server:
            probe = HttpProbe(server.address)
            answers = [await probe.get_json("/health", 2) for _ in range(3)]
            probe.close()
        assert answers == [(200, {"conn": c}) for c in (1, 2, 3)]
        assert server.connections == 3

    run(scenario())


def test_probe_times_out_then_polls_again_on_a_new_connection() -> None:
    async def scenario() -> None:
        # The first connection never answers; later ones do at once.
        async with Server(lambda conn, n: None if conn == 1 else json_response({"n": n})) as srv:
            probe = HttpProbe(srv.address)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ProbeError, match=r"no answer within 0\.3 s"):
                await probe.get_json("/health", 0.3)
            assert 0.25 <= loop.time() - started < 2
            assert await probe.get_json("/health", 2) == (200, {"n": 2})
            assert await probe.get_json("/health", 2) == (200, {"n": 3})
            probe.close()
        assert srv.connections == 2

    run(scenario())


def test_a_late_answer_is_not_taken_for_the_next_poll() -> None:
    async def scenario() -> None:
        late: list[asyncio.StreamWriter] = []

        def answer(conn: int, n: int) -> bytes | None:
            if conn == 1:
                late.append(srv.writers[0])
                return None
            return json_response({"fresh": n})

        async with Server(answer) as srv:
            probe = HttpProbe(srv.address)
            with pytest.raises(ProbeError):
                await probe.get_json("/health", 0.2)
            # The first connection's answer arrives now, after the timeout.
            for writer in late:
                if not writer.is_closing():
                    writer.write(json_response({"stale": True}))
            assert await probe.get_json("/health", 2) == (200, {"fresh": 2})
            probe.close()

    run(scenario())


def test_a_vm_closing_an_idle_connection_costs_no_failed_poll() -> None:
    async def scenario() -> None:
        def answer(conn: int, n: int) -> None:
            # Answers without Connection: close, then closes, as an idle timeout would.
            writer = srv.writers[conn - 1]
            writer.write(json_response({"n": n}))
            writer.close()

        async with Server(answer) as srv:
            probe = HttpProbe(srv.address)
            for n in (1, 2, 3):
                assert await probe.get_json("/health", 2) == (200, {"n": n})
                await asyncio.sleep(0.1)  # the close reaches the probe between polls
            probe.close()
        assert srv.connections == 3

    run(scenario())


def test_refused_port_is_a_probe_error() -> None:
    async def scenario() -> None:
        probe = HttpProbe(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(ProbeError):
            await probe.get_json("/health", 2)
        with pytest.raises(ProbeError):  # and again: no connection is kept
            await probe.get_json("/health", 2)

    run(scenario())


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}",  # a latin-1 "digit" int() refuses
        b"HTTP/1.1 \xb2\xb2\xb2 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n{}",
    ],
)
def test_garbage_answers_are_probe_errors_and_the_next_poll_reconnects(reply: bytes) -> None:
    async def scenario() -> None:
        async with Server(lambda conn, n: reply if conn == 1 else json_response("ok")) as srv:
            probe = HttpProbe(srv.address)
            with pytest.raises(ProbeError):
                await probe.get_json("/health", 2)
            assert await probe.get_json("/health", 2) == (200, "ok")
            probe.close()
        assert srv.connections == 2

    run(scenario())


def test_server_closing_mid_answer_is_a_probe_error() -> None:
    async def scenario() -> None:
        truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{"

        def answer(conn: int, n: int) -> bytes | None:
            if conn == 1:
                srv.writers[0].write(truncated)
                srv.writers[0].close()
                return None
            return json_response({"n": n})

        async with Server(answer) as srv:
            probe = HttpProbe(srv.address)
            with pytest.raises(ProbeError, match="connection closed"):
                await probe.get_json("/health", 2)
            assert await probe.get_json("/health", 2) == (200, {"n": 2})
            probe.close()

    run(scenario())


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!",
        b"HTTP/1.1 200 OK\r\n\r\n",  # no Content-Length: an empty body, not JSON
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
    ],
)
def test_an_answer_that_is_not_json_is_a_probe_error(reply: bytes) -> None:
    async def scenario() -> None:
        async with Server(lambda conn, n: reply if n == 1 else json_response("ok")) as srv:
            probe = HttpProbe(srv.address)
            with pytest.raises(ProbeError, match="not JSON"):
                await probe.get_json("/health", 2)
            assert await probe.get_json("/health", 2) == (200, "ok")
            probe.close()

    run(scenario())


@pytest.mark.parametrize(
    "address", ["https://127.0.0.1:80", "http://127.0.0.1", "127.0.0.1:80", "", "http://:80"]
)
def test_probe_refuses_an_address_it_cannot_poll(address: str) -> None:
    with pytest.raises(ValueError, match="not an http://HOST:PORT address"):
        HttpProbe(address)
