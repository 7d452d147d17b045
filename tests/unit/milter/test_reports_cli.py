"""``postwarden dmarc report`` from the command line, with a fake sendmail."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from postwarden.cli import main
from postwarden.lab.dns import DnsServer
from postwarden.milter.reports import DAY, Evaluation, open_evaluation_store, validate

TODAY = int(time.time()) // DAY * DAY
YESTERDAY = TODAY - DAY
EVALUATION = Evaluation(
    time=YESTERDAY + 100, source_ip="192.0.2.1", header_from="example.org",
    envelope_from="example.org", envelope_to="example.net", policy_domain="example.org",
    record="v=DMARC1; p=reject; rua=mailto:agg@example.org,mailto:ext@reports.example",
    disposition="none", dkim_aligned=True, spf_aligned=True,
    dkim=(("example.org", "s", "pass"),), spf=("example.org", "mfrom", "pass"))
OTHER = replace(EVALUATION, policy_domain="example.com", header_from="example.com",
                record="v=DMARC1; p=none")
SENDMAIL = """#!{python}
import json, sys
with open({log!r}, "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "stdin": sys.stdin.read()}}) + "\\n")
"""


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path}/state.db"

    async def fill() -> None:
        s = await open_evaluation_store(url)
        for evaluation in (EVALUATION, EVALUATION, OTHER,
                           replace(EVALUATION, time=TODAY - 40 * DAY)):
            await s.add(evaluation)
        await s.close()
    asyncio.run(fill())
    return url


def stored(url: str) -> int:
    async def count() -> int:
        s = await open_evaluation_store(url)
        try:
            return len(await s.between(0, TODAY + DAY))
        finally:
            await s.close()
    return asyncio.run(count())


def report(*args: str) -> int:
    return main(["dmarc", "report", "--org-name", "Example", "--email",
                 "dmarc@mx.example.net", *args])


def test_out_writes_one_checked_file_per_policy_domain(
        store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert report("--store", store, "--out", str(out), "--dry-run") == 0
    assert list(out.iterdir()) == []
    assert "would write" in capsys.readouterr().out
    assert report("--store", store, "--out", str(out), "--keep", "0") == 0
    files = sorted(p.name for p in out.iterdir())
    assert files[0].startswith(f"mx.example.net!example.com!{YESTERDAY}!{TODAY - 1}!")
    assert files[1].startswith(f"mx.example.net!example.org!{YESTERDAY}!{TODAY - 1}!")
    data = gzip.decompress((out / files[1]).read_bytes())
    validate(data, "rfc9990")
    assert b"<count>2</count>" in data
    assert stored(store) == 4
    # --format rfc7489, an explicit period, and expiry of what is older than --keep.
    old = tmp_path / "old"
    old.mkdir()
    assert report("--store", store, "--out", str(old), "--format", "rfc7489",
                  "--since", str(YESTERDAY), "--until", str(TODAY), "--keep", "31") == 0
    validate(gzip.decompress(next(old.glob("*example.org*")).read_bytes()), "rfc7489")
    assert stored(store) == 3


def test_send_mails_verified_destinations(store: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "sendmail.log"
    program = tmp_path / "sendmail"
    program.write_text(SENDMAIL.format(python=sys.executable, log=str(log)))
    program.chmod(0o755)
    zone = {"example.org._report._dmarc.reports.example": {"TXT": ["v=DMARC1"]}}
    with DnsServer(zone) as dns:
        assert report("--store", store, "--send", "--sendmail", str(program),
                      "--nameserver", dns.address, "--keep", "0") == 0
    [call] = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["argv"] == ["-i", "-f", "dmarc@mx.example.net", "--", "agg@example.org",
                            "ext@reports.example"]
    mail = email.message_from_string(call["stdin"], policy=email.policy.default)
    assert str(mail["Subject"]).startswith("Report Domain: example.org Submitter: ")
    printed = capsys.readouterr().out
    assert "example.com: not sent: no usable rua mailto: destination" in printed
    assert "sent mx.example.net!example.org!" in printed


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "/nonexistent"], "not a directory"),
    (["--out", ".", "--since", "yesterday"], "not a time"),
    (["--out", ".", "--since", "2026-11-29", "--until", "2026-11-28"], "after --since"),
    (["--out", ".", "--keep", "-1"], "--keep"),
    (["--out", ".", "--send"], "not allowed with"),
    (["--out", ".", "--format", "xml"], "invalid choice"),
])
def test_usage_errors(store: str, args: list[str], message: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    assert report("--store", store, *args) == 2
    assert message in capsys.readouterr().err


def test_the_report_email_is_required(store: str, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    config = tmp_path / "postwarden.toml"
    config.write_text("")
    assert main(["dmarc", "report", "--config", str(config), "--store", store,
                 "--out", "."]) == 2
    assert "--org-name and --email" in capsys.readouterr().err


def test_settings_name_the_reporter_and_the_store(store: str, tmp_path: Path) -> None:
    config = tmp_path / "postwarden.toml"
    config.write_text(f"""
[store]
url = "sqlite:///nonexistent-dir/state.db"
[milter]
store = "{store}"
[dmarc]
report_org_name = "Configured Org"
report_email = "reports@config.example"
""")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["dmarc", "report", "--config", str(config), "--out", str(out),
                 "--keep", "0"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and all(n.startswith("config.example!") for n in names)
    assert b"<org_name>Configured Org</org_name>" in gzip.decompress(
        (out / names[0]).read_bytes())
