"""The requests collector on generated access logs: counts, rates, windows, restarts and privacy."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import shutil
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.plugin_api import PluginContext
from collectors import hll
from collectors.logformats import COMBINED, combined_time, parse_json_line
from collectors.requests import KEY_FILE, RequestsCollector, RequestsSettings

T0 = 1_795_330_800  # on the hour
NOW = T0 + 5000.5
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
GARBAGE = ["", "garbage", '1.2.3.4 - - [not a time] "GET / HTTP/1.1" 200 1', "\x00\x01binary", "{}", "[1, 2]"]


def combined(addr: str, t: float, status: int = 200) -> str:
    g = time.gmtime(t)
    stamp = f"{g.tm_mday:02d}/{MONTHS[g.tm_mon - 1]}/{g.tm_year}:{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000"
    return f'{addr} - - [{stamp}] "GET /vault/{int(t) % 97} HTTP/1.1" {status} 512 "-" "agent/1.0"\n'


def as_json(addr: str, t: float, status: int = 200) -> str:
    return (
        json.dumps({"time": datetime.fromtimestamp(t, UTC).isoformat(), "remote_addr": addr, "status": status}) + "\n"
    )


FORMATS: dict[str, Callable[[str, float, int], str]] = {"combined": combined, "json": as_json}


def clients(n: int, offset: int = 0) -> list[str]:
    """``n`` distinct clients, two in three IPv4, the rest IPv6."""
    out = []
    for i in range(offset, offset + n):
        out.append(f"198.51.{i // 250}.{i % 250 + 1}" if i % 3 else f"2001:db8::{i:x}")
    return out


def spellings(addr: str) -> list[str]:
    """Other ways a log may write the same client."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return [f"::ffff:{addr}", f"::FFFF:{addr}"]
    return [ip.exploded.upper()]


def write(path: Path, text: str) -> None:
    with path.open("a") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def make(tmp_path: Path, fmt: str = "combined", **extra: object) -> RequestsCollector:
    cfg = RequestsSettings(access_log=tmp_path / "access.log", format=fmt, max_lines_per_tick=1000, **extra)
    return RequestsCollector(cfg, interval=10.0, state_dir=tmp_path / "state", clock=lambda: NOW)


def values(collector: RequestsCollector) -> dict[str, float]:
    out: dict[str, float] = {}
    for sample in collector.collect_blocking():
        key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sample.labels)
        out[key] = sample.value
    return out


def sketch_count(tmp_path: Path, addrs: list[str]) -> int:
    """What the sketch counts for exactly these addresses under the test's key (two may share a register)."""
    hasher = hll.KeyedHasher((tmp_path / "state" / KEY_FILE).read_bytes())
    registers = bytearray(hll.M)
    hll.apply_updates(registers, (hasher.update_of(ipaddress.ip_address(a).packed) for a in addrs))
    return round(hll.estimate(registers))


def near(n: int) -> range:
    """The counts the sketch may give for ``n`` distinct addresses under any key.

    Small counts fall short only by addresses that share a register with another: about
    Poisson with mean n(n-1)/2M (0.08 at 50: two or more short in 0.3% of keys). The
    range allows a shortfall reached in fewer than one key in a billion, and the
    estimator's rounding up by one.
    """
    mean = n * (n - 1) / (2 * hll.M)
    shortfall, term, tail = 0, math.exp(-mean), 1.0
    while tail - term > 1e-9:  # tail - term: P(shortfall > this)
        tail -= term
        shortfall += 1
        term *= mean / shortfall
    return range(n - shortfall, n + 2)


def drain(collector: RequestsCollector) -> dict[str, float]:
    """Collect until a tick reads nothing new (the per-tick bound spreads big logs over ticks)."""
    got = values(collector)
    while True:
        again = values(collector)
        if again == got:
            return got
        got = again


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_counts_through_both_rotations_and_garbage(tmp_path: Path, fmt: str) -> None:
    """Exact request and malformed counts, and near-exact uniques, across rename and copytruncate."""
    line = FORMATS[fmt]
    path = tmp_path / "access.log"
    people = clients(150)
    collector = make(tmp_path, fmt)
    expected_lines = 0

    def burst(part: list[str], start: float, garbage: int) -> None:
        nonlocal expected_lines
        text = "".join(line(addr, start + i, 200 + 100 * (i % 4)) for i, addr in enumerate(part))
        write(path, text + "".join(g + "\n" for g in GARBAGE[:garbage]))
        expected_lines += len(part)

    burst(people[:80] + [s for a in people[:10] for s in spellings(a)], NOW - 1800, 3)
    values(collector)
    path.rename(tmp_path / "access.log.1")  # rotation by rename, with a late line in the old file
    write(tmp_path / "access.log.1", line(people[80], NOW - 1500, 200))
    expected_lines += 1
    burst(people[81:140], NOW - 1200, 3)
    values(collector)
    shutil.copy(path, tmp_path / "access.log.2")  # rotation by copytruncate
    os.truncate(path, 0)
    burst(people[140:], NOW - 600, 0)
    got = drain(collector)
    assert expected_lines == got["requests_total"]
    assert 6 == got["log_lines_malformed_total{log=access}"]
    # Exactly these 150 clients are in the window (no spelling counted twice), as the
    # sketch counts them under this run's random key; two of them may share a register.
    assert sketch_count(tmp_path, people) == got["unique_ips_1h"]
    assert got["unique_ips_1h"] in near(150)
    assert got["unique_ips_1h"] == got["unique_ips_24h"]


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_rates_count_the_last_interval_by_log_time(tmp_path: Path, fmt: str) -> None:
    """requests_per_s and the class rates cover the last 10 whole seconds of log time."""
    line = FORMATS[fmt]
    end = int(NOW) - 1  # the last complete second
    statuses = [200] * 20 + [301] * 5 + [404] * 3 + [503] * 2
    text = line("192.0.2.9", end - 30, 200)  # before the interval
    text += "".join(line("192.0.2.1", end - i % 10, status) for i, status in enumerate(statuses))
    text += line("192.0.2.9", end + 1, 200)  # the current second, not complete yet
    write(tmp_path / "access.log", text)
    got = values(make(tmp_path, fmt))
    assert 32 == got["requests_total"]
    assert 3.0 == got["requests_per_s"]
    expected = {"2xx": 2.0, "3xx": 0.5, "4xx": 0.3, "5xx": 0.2}
    assert expected == {c: got[f"requests_class_per_s{{class={c}}}"] for c in expected}


def test_windows_follow_log_time(tmp_path: Path) -> None:
    """Clients seen two hours ago count in 24 hours but not in the last hour; 30 hours ago in neither."""
    old, recent, ancient = clients(40), clients(10, offset=100), clients(25, offset=200)
    text = "".join(combined(a, NOW - 30 * 3600) for a in ancient)
    text += "".join(combined(a, NOW - 7200) for a in old)
    text += "".join(combined(a, NOW - 300) for a in recent)
    write(tmp_path / "access.log", text)
    got = values(make(tmp_path))
    assert (sketch_count(tmp_path, recent), sketch_count(tmp_path, old + recent)) == (
        got["unique_ips_1h"],
        got["unique_ips_24h"],
    )
    assert got["unique_ips_1h"] in near(10)
    assert got["unique_ips_24h"] in near(50)


def test_first_start_reads_back_only_as_far_as_the_windows(tmp_path: Path) -> None:
    """On a first start the reader seeks to about 25 hours back instead of reading the whole log."""
    old = "".join(combined(a, NOW - 40 * 3600 + i) for i, a in enumerate(clients(250) * 80))
    recent = "".join(combined(a, NOW - 600 + i) for i, a in enumerate(clients(30, offset=500)))
    write(tmp_path / "access.log", old + recent)
    got = drain(make(tmp_path))
    assert 30 <= got["requests_total"] < 2000
    assert sketch_count(tmp_path, clients(30, offset=500)) == got["unique_ips_24h"]
    assert got["unique_ips_24h"] in near(30)


def test_sketches_and_offsets_survive_a_restart(tmp_path: Path) -> None:
    """A new collector given the saved state counts on: no line twice, no client twice."""
    path = tmp_path / "access.log"
    first, second = clients(100), clients(100, offset=50)
    write(path, "".join(combined(a, NOW - 900) for a in first))
    before = make(tmp_path)
    values(before)
    state = json.loads(json.dumps(before.save_state()))
    write(path, "".join(combined(a, NOW - 300) for a in second))
    after = make(tmp_path)
    after.load_state(state)
    got = values(after)
    assert 200 == got["requests_total"]
    assert sketch_count(tmp_path, sorted(set(first + second))) == got["unique_ips_1h"]
    assert got["unique_ips_1h"] in near(150)
    key_file = tmp_path / "state" / KEY_FILE
    assert 0o600 == stat.S_IMODE(key_file.stat().st_mode)


def test_sketches_from_another_key_are_not_mixed_in(tmp_path: Path) -> None:
    """State saved under a different sketch key keeps its offsets but not its sketches."""
    path = tmp_path / "access.log"
    write(path, "".join(combined(a, NOW - 900) for a in clients(40)))
    before = make(tmp_path)
    values(before)
    state = before.save_state()
    (tmp_path / "state" / KEY_FILE).unlink()
    after = make(tmp_path)
    after.load_state(state)
    got = values(after)
    assert 40 == got["requests_total"]
    assert 0 == got["unique_ips_1h"]


def test_tarpit_log_is_counted_apart(tmp_path: Path) -> None:
    """A configured tarpit log gives its own unique counts and malformed counter."""
    write(tmp_path / "access.log", "".join(combined(a, NOW - 60) for a in clients(5)))
    write(tmp_path / "tarpit.log", "".join(combined(a, NOW - 60, 404) for a in clients(12, offset=300)) + "junk\n")
    got = values(make(tmp_path, tarpit_log=tmp_path / "tarpit.log"))
    assert (sketch_count(tmp_path, clients(5)), sketch_count(tmp_path, clients(12, offset=300)), 1) == (
        got["unique_ips_1h"],
        got["tarpit_unique_ips_1h"],
        got["log_lines_malformed_total{log=tarpit}"],
    )
    assert got["tarpit_unique_ips_1h"] in near(12)


def test_no_address_is_kept_in_state_or_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The saved state, the state directory and everything printed or logged hold no input address."""
    caplog.set_level(logging.DEBUG)
    people = clients(300)
    path = tmp_path / "access.log"
    text = "".join(combined(a, NOW - 600 + i % 500, 200) for i, a in enumerate(people * 3))
    write(path, text + "".join(combined(s, NOW - 100) for a in people[:20] for s in spellings(a)))
    collector = make(tmp_path)
    drain(collector)
    saved = json.dumps(collector.save_state())
    (tmp_path / "state" / "requests.json").write_text(saved)
    out = capsys.readouterr()
    haystacks = [saved, out.out, out.err, caplog.text]
    haystacks += [p.read_bytes().decode("latin-1") for p in (tmp_path / "state").rglob("*") if p.is_file()]
    for addr in people:
        ip = ipaddress.ip_address(addr)
        needles = {addr, str(ip), ip.exploded, *spellings(addr), ip.packed.hex()}
        for hay in haystacks:
            assert not any(needle.lower() in hay.lower() for needle in needles)


def reachable_text(root: object) -> list[bytes]:
    """Every bytes or str value reachable from ``root`` through containers and instance attributes."""
    found: list[bytes] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, int | float | bool | type(None)):
            continue
        seen.add(id(obj))
        if isinstance(obj, bytes | bytearray | str):
            found.append(obj.encode("latin-1", "replace") if isinstance(obj, str) else bytes(obj))
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif getattr(type(obj), "__module__", "").startswith(("collectors.", "agent.")):
            stack.extend(getattr(obj, "__dict__", {}).values())
            stack.extend(getattr(obj, name) for name in getattr(type(obj), "__slots__", ()) if hasattr(obj, name))
    return found


def test_no_address_outlives_the_chunk_it_was_read_in(tmp_path: Path) -> None:
    """After a read, nothing the collector holds contains an input address, whichever field the address was in."""
    people = clients(40)
    text = "".join(combined(a, NOW - 3 * 3600) for a in people)  # the bulk path
    text += "".join(combined(a, NOW - 20) for a in people)  # the per-second path
    text += "".join(f'vhost [{a}] "GET / HTTP/1.1" 200 1\n' for a in people)  # an address where a time belongs
    write(tmp_path / "access.log", text)
    collector = make(tmp_path)
    drain(collector)
    write(tmp_path / "access.log", "".join(f"{a}\n" for a in people))  # garbage lines that are bare addresses
    drain(collector)
    write(tmp_path / "access.log", combined(people[0], NOW - 5)[:30])  # a line still being written
    drain(collector)
    held = b"\n".join(reachable_text(collector))
    assert held  # the walk does reach the collector's data (paths, formats, time stamps)
    for addr in people:
        ip = ipaddress.ip_address(addr)
        assert not any(needle.encode() in held for needle in {addr, ip.exploded, *spellings(addr)})
        assert ip.packed not in held


def test_from_settings_needs_a_log(tmp_path: Path) -> None:
    """Without a log the collector is not configured; with one it is."""
    context = PluginContext(interval=10.0, state_dir=tmp_path, collector_timeout=5.0)
    assert RequestsCollector.from_settings(RequestsSettings(), context) is None
    configured = RequestsCollector.from_settings(RequestsSettings(access_log=tmp_path / "a.log"), context)
    assert isinstance(configured, RequestsCollector)


async def test_collect_runs_off_the_loop_and_tolerates_a_missing_log(tmp_path: Path) -> None:
    """collect() on a log that does not exist yet reports zeros, not an error."""
    got = {s.name: s.value for s in await make(tmp_path).collect() if not s.labels}
    assert 0 == got["requests_total"]
    assert 0 == got["unique_ips_24h"]


def test_each_window_stays_within_64_kib_over_a_day(tmp_path: Path) -> None:
    """After 30 hours of log, each window holds at most 7 sketches and 64 KiB of registers."""
    start = int(NOW) - 30 * 3600
    people = clients(3000)
    text = "".join(combined(people[(i * 7) % 3000], start + 20 * i) for i in range(30 * 180))
    write(tmp_path / "access.log", text)
    collector = make(tmp_path)
    got = drain(collector)
    log = collector.logs["access"]
    assert 30 * 180 == got["requests_total"]
    windows = log.uniques
    assert (7, 7) == (len(windows.fine.buckets), len(windows.coarse.buckets))
    assert windows.fine.memory_bytes() <= 64 * 1024
    assert windows.coarse.memory_bytes() <= 64 * 1024


_ADDRS = st.sampled_from(["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::7", "[2001:db8::7]:443", "-", "x y"])
_STAMPS = st.integers(int(NOW) - 7200, int(NOW) + 100)
_COMBINED_LINES = st.one_of(
    st.builds(lambda a, t, s: combined(a, t, s).rstrip("\n"), _ADDRS, _STAMPS, st.sampled_from([200, 302, 404, 503])),
    st.sampled_from([*GARBAGE, '1.2.3.4 - - [22/Nov/2026:07:00:00 +0000] "GET /\\" 200 x" 404 1', "1.2.3.4 x [y"]),
    st.builds(lambda t: combined("1.2.3.4", t).replace("Nov", "Foo").rstrip("\n"), _STAMPS),
)
_JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 999), st.text(max_size=4), st.just({"status": 500}))
_JSON_LINES = st.one_of(
    st.builds(lambda a, t, s: as_json(a, t, s).rstrip("\n"), _ADDRS, _STAMPS, st.sampled_from([200, 302, 404, 503])),
    st.builds(
        lambda a, t, s, extra: json.dumps({"ts": t, "status": s, "client_ip": a, "x": extra}),
        _ADDRS,
        _STAMPS,
        st.sampled_from([200, "404", "2xx", 600, True]),
        _JSON_VALUES,
    ),
    st.sampled_from([*GARBAGE, '{"time": "2026-11-22T07:00:00+00:00", "remote_addr": "1.2.3.4", "status": 200']),
)


def _expected_requests(fmt: str, lines: list[str]) -> int:
    """Requests among ``lines`` by the line-by-line definition: strict expression or json.loads."""
    if fmt == "json":
        return sum(parse_json_line(line.encode()) is not None for line in lines)
    count = 0
    for line in lines:
        match = COMBINED.match(b"\n" + line.encode() + b"\n")
        count += match is not None and combined_time(match.group(2)) is not None
    return count


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_whole_chunk_expressions_count_like_line_by_line_parsing(tmp_path: Path, fmt: str, data: st.DataObject) -> None:
    """Whatever the mix of lines, the chunk-wide fast paths count exactly what line-by-line parsing counts."""
    lines = data.draw(st.lists(_COMBINED_LINES if fmt == "combined" else _JSON_LINES, max_size=40))
    folder = tmp_path / str(len(list(tmp_path.iterdir())))
    folder.mkdir()
    write(folder / "access.log", "".join(line + "\n" for line in lines))
    got = values(make(folder, fmt))
    expected = _expected_requests(fmt, lines)
    assert (expected, len(lines) - expected) == (got["requests_total"], got["log_lines_malformed_total{log=access}"])


def test_json_lines_that_leave_the_first_lines_types_count_like_json_loads(tmp_path: Path) -> None:
    """Another value type or spacing than the first line's, an escape or a tab: each line counts as json.loads reads."""
    people = clients(30)
    lines = [
        json.dumps({"time": T0 + 4000 + i, "remote_addr": a, "status": 200, "bytes": 512}) for i, a in enumerate(people)
    ]
    lines[5] = lines[5].replace('"bytes": 512', '"bytes": "-"')
    lines[7] = lines[7].replace(", ", ",").replace(": ", ":")  # spaced otherwise than the first line
    lines[9] = lines[9].replace('"status": 200', '"status": "404"')
    lines[14] = lines[14].replace('"time": ', '"time": "x').replace(', "remote_addr"', '", "remote_addr"')
    lines[20] = lines[20].replace(', "bytes"', ',\t"bytes"')
    lines[25] = lines[25].replace('"remote_addr": "', '"remote_addr": "\\u0020')
    collector = make(tmp_path, "json")
    write(tmp_path / "access.log", "".join(line + "\n" for line in lines[:20]))  # plain text: no escape, no tab
    drain(collector)
    write(tmp_path / "access.log", "".join(line + "\n" for line in lines[20:]))
    got = drain(collector)
    expected = sum(parse_json_line(line.encode()) is not None for line in lines)
    assert (expected, len(lines) - expected) == (got["requests_total"], got["log_lines_malformed_total{log=access}"])
    counted = people[:14] + people[15:]  # line 14's time is none; line 25's escaped space is stripped off
    assert sketch_count(tmp_path, counted) == got["unique_ips_1h"]
