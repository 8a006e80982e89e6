"""The spool under real process kills and a real full disk, driven through subprocesses."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.settings import SpoolSettings
from agent.spool import Spool

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from agent.settings import SpoolSettings
    from agent.spool import Spool

    root, log, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    spool = Spool(root, SpoolSettings(), sinks=("central", "loki"))
    spool.open()
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    print("ready", flush=True)
    n = start
    while True:
        doc_id = f"hb{n:012d}"
        spool.put(doc_id, json.dumps({"id": doc_id, "pad": "x" * (n % 300)}).encode())
        os.write(out, f"put {doc_id}\\n".encode())
        n += 1
        if n % 3 == 0:
            # Ack every other heartbeat of the batch, so later ones are acked while earlier ones are kept.
            batch = spool.batch("central", 6, 1 << 20)
            acked = [p.id for p in batch[1::2]]
            os.write(out, "".join(f"try {i}\\n" for i in acked).encode())
            spool.settle("central", acked, {})
            os.write(out, "".join(f"ack {i}\\n" for i in acked).encode())
            to_loki = [p.id for p in spool.batch("loki", 4, 1 << 20)]
            spool.settle("loki", to_loki, {})
            os.write(out, "".join(f"lok {i}\\n" for i in to_loki).encode())
    """
)


def read_log(path: Path) -> dict[str, set[str]]:
    """Ids by event (complete lines only): put returned, central settle begun, central and loki settle returned."""
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    events: dict[str, set[str]] = {"put": set(), "try": set(), "ack": set(), "lok": set()}
    for line in lines:
        kind, doc_id = line.split(" ")
        events[kind].add(doc_id)
    return events


def kill_at_random(script: str, root: Path, log: Path, first_seq: int, env: dict[str, str], after: float) -> None:
    """Start the writer ``script``, let it run ``after`` seconds once ready, and SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(root), str(log), str(first_seq)], env=env, stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    time.sleep(after)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_torn_file_or_revives_an_ack(tmp_path: Path) -> None:
    """After each SIGKILL every pending file parses, every stored heartbeat is there and no acked one reappears."""
    root, log = tmp_path / "spool", tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(7)
    for round_ in range(12):
        kill_at_random(WRITER, root, log, round_ * 1_000_000, env, rng.uniform(0.0, 0.4))

        files = {p.name: p.read_bytes() for p in (root / "pending").iterdir()}
        torn = [name for name, raw in files.items() if json.loads(raw)["id"] + ".json" != name]
        events = read_log(log)
        both = events["ack"] & events["lok"]
        on_disk = {name[:-5] for name in files}
        # Only a heartbeat central was asked to settle may be gone; one both sinks settled must be.
        assert ([], set(), set()) == (torn, both & on_disk, events["put"] - events["try"] - on_disk)

        spool = Spool(root, SpoolSettings(), sinks=("central", "loki"))
        spool.open()
        offered = {p.id for p in spool.iter_pending()}
        stats = spool.stats()
        to_central = {p.id for p in spool.batch("central", 10**6, 1 << 40)}
        to_loki = {p.id for p in spool.batch("loki", 10**6, 1 << 40)}
        spool.close()
        assert (stats.quarantined_total, os.listdir(root / "tmp")) == (0, [])
        assert (set(), set()) == (events["ack"] & to_central, events["lok"] & to_loki)
        # open() finishes deletions a kill interrupted: only settled heartbeats may go.
        assert (set(), set()) == (offered - on_disk, on_disk - offered - events["try"])
    assert len(events["put"]) > 24 and len(events["ack"]) > 0


FILLER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from agent.errors import SpoolError
    from agent.settings import SpoolSettings
    from agent.spool import Spool

    spool = Spool(Path(sys.argv[1]), SpoolSettings(), sinks=("central",))
    spool.open()
    stored, code = [], None
    for n in range(10_000):
        doc_id = f"hb{n:06d}"
        try:
            spool.put(doc_id, json.dumps({"id": doc_id, "pad": "x" * 3000}).encode())
        except SpoolError as exc:
            code = exc.code
            break
        stored.append(doc_id)
    tmp_left = sorted(p.name for p in (Path(sys.argv[1]) / "tmp").iterdir())
    spool.settle("central", stored[:10], {})
    spool.put("hb999998", json.dumps({"id": "hb999998"}).encode())
    after = [p.id for p in spool.batch("central", 10_000, 1 << 30)]
    print(json.dumps({"code": code, "stored": len(stored), "tmp_left": tmp_left,
                      "after": after == stored[10:] + ["hb999998"]}))
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a private tmpfs")
def test_a_real_full_disk_raises_enospc_and_recovers_when_acks_free_space(tmp_path: Path) -> None:
    """On a full tmpfs a put raises SpoolError('enospc') leaving no temporary file; acks free space for the next put."""
    mount = tmp_path / "small"
    mount.mkdir()
    script = 'mount -t tmpfs -o size=128k tmpfs "$1" || exit 77; exec "$2" -c "$3" "$1/spool"'
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(mount), sys.executable, FILLER],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=60,
    )
    if result.returncode == 77 or result.stderr.startswith(b"unshare:"):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here")
    assert (0, b"") == (result.returncode, result.stderr)
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("code", "tmp_left", "after")} == {"code": "enospc", "tmp_left": [], "after": True}
    assert report["stored"] > 10


NEWEST_ONLY_WRITER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from agent.settings import SpoolSettings
    from agent.spool import Spool

    root, log, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    spool = Spool(root, SpoolSettings(), sinks=("central", "pushgateway"), newest_only=("pushgateway",))
    spool.open()
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    print("ready", flush=True)
    n = start
    while True:
        doc_id = f"hb{n:012d}"
        spool.put(doc_id, json.dumps({"id": doc_id}).encode())
        os.write(out, f"put {doc_id}\\n".encode())
        n += 1
        if n % 3 == 0:
            acked = [p.id for p in spool.batch("central", 4, 1 << 20)]
            os.write(out, "".join(f"try {i}\\n" for i in acked).encode())
            spool.settle("central", acked, {})
            os.write(out, "".join(f"ack {i}\\n" for i in acked).encode())
        if n % 2 == 0:  # the Pushgateway answers every other tick
            spool.settle("pushgateway", [p.id for p in spool.batch("pushgateway", 10, 1 << 20)], {})
    """
)


@pytest.mark.slow
def test_sigkill_with_a_newest_only_sink_loses_nothing_for_central_and_keeps_only_the_newest(tmp_path: Path) -> None:
    """After each SIGKILL and reopen, nothing central left unsettled is gone; only the newest it settled may stay."""
    root, log = tmp_path / "spool", tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(11)
    results = []
    for round_ in range(6):
        kill_at_random(NEWEST_ONLY_WRITER, root, log, round_ * 1_000_000, env, rng.uniform(0.05, 0.3))

        events = read_log(log)
        spool = Spool(root, SpoolSettings(), sinks=("central", "pushgateway"), newest_only=("pushgateway",))
        spool.open()
        on_disk = {p.name[:-5] for p in (root / "pending").iterdir()}
        newest = max(on_disk, default="")
        to_gateway = [p.id for p in spool.batch("pushgateway", 10, 1 << 20)]
        spool.close()
        unsettled = events["put"] - events["try"]
        results.append((unsettled - on_disk, (on_disk - {newest}) & events["ack"], to_gateway in ([], [newest])))
    assert [(set(), set(), True)] * 6 == results
    assert len(read_log(log)["try"]) > 0
