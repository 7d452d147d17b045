"""The RFC 7208 test suite (openspf.org, as shipped in the pyspf 2.0.14 sdist), every case.

The sdist is fetched from PyPI with pip at test time (never committed), checked against its
SHA-256 and kept in ~/.cache/postwarden-test-data (or $POSTWARDEN_TEST_DATA) so reruns do
not download it again. When it cannot be had, the test fails: it does not skip.

Each scenario's ``zonedata`` becomes a FakeResolver, read the way pyspf's own driver
(test/testspf.py) reads it: a type "SPF" record also serves as TXT unless the name has TXT
records; a bare ``TIMEOUT`` entry makes every type without a record before it time out and
ends the name's data; ``{TYPE: TIMEOUT}`` makes that type time out; names under "error."
that are not in the zone time out; a name with a label over 63 octets cannot be queried (a
resolver error). Each case's ``result`` may be one word or a list of acceptable words; its
``explanation``, when given, must equal ours, with "DEFAULT" as the default explanation.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from postwarden.policy.model import DnsAnswer
from postwarden.policy.spf_eval import check_identity
from postwarden.testing import FakeResolver

SDIST = "pyspf-2.0.14.tar.gz"
SDIST_SHA256 = "57a7ef01bda090173aafb6af0106251686ed73f03db4e911fcd34c57fc347186"
MEMBER = "pyspf-2.0.14/test/rfc7208-tests.yml"
CASES_EXPECTED = 203
TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "CNAME")


def _cache_dir() -> Path:
    configured = os.environ.get("POSTWARDEN_TEST_DATA")
    return Path(configured) if configured else Path.home() / ".cache" / "postwarden-test-data"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_suite() -> bytes:
    """The YAML text, from the cached sdist or from PyPI (then cached)."""
    cache = _cache_dir()
    sdist = cache / SDIST
    if not sdist.exists() or _sha256(sdist) != SDIST_SHA256:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            run = subprocess.run(
                [sys.executable, "-m", "pip", "download", "pyspf==2.0.14", "--no-deps",
                 "--no-binary", ":all:", "--disable-pip-version-check", "-d", scratch],
                capture_output=True, text=True, timeout=300, check=False)
            got = Path(scratch) / SDIST
            if run.returncode != 0 or not got.exists():
                raise RuntimeError(f"pip download pyspf==2.0.14 failed: {run.stderr[-500:]}")
            if _sha256(got) != SDIST_SHA256:
                raise RuntimeError(f"{SDIST} from PyPI has an unexpected SHA-256")
            got.replace(sdist)
    with tarfile.open(sdist, "r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise RuntimeError(f"{MEMBER} is missing from {SDIST}")
        return member.read()


class SuiteResolver(FakeResolver):
    """FakeResolver plus the two quirks of pyspf's test driver (see the module docstring)."""

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        if any(len(label) > 63 for label in name.split(".")):
            self.queries.append((name, rdtype))
            return DnsAnswer("SERVFAIL")
        key = name.rstrip(".").lower()
        if key.startswith("error.") and key not in self.zone:
            self.queries.append((name, rdtype))
            return DnsAnswer("TIMEOUT")
        return await super().query(name, rdtype)


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def build_resolver(zonedata: dict[str, list[Any]]) -> SuiteResolver:
    resolver = SuiteResolver()
    for name, entries in zonedata.items():
        resolver.exist(name)
        seen: set[str] = set()
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        generated: list[str] = []
        timed_out = False
        for entry in entries:
            if entry == "TIMEOUT":
                for rdtype in TYPES:
                    if rdtype not in seen:
                        resolver.fail(name, rdtype)
                timed_out = True
                break
            ((rdtype, value),) = entry.items()
            if value == "TIMEOUT":
                resolver.fail(name, "TXT" if rdtype == "SPF" and not has_txt else rdtype)
                continue
            if rdtype == "SPF":
                if not has_txt and value != "NONE":
                    generated.append(_text(value))
                continue
            if value == "NONE":
                continue  # the name has "no TXT" (no SPF-to-TXT copy), and no record
            if rdtype == "MX":
                value = f"{value[0]} {value[1]}"
            resolver.add(name, rdtype, _text(value))
            seen.add(rdtype)
        if not timed_out:
            for text in generated:
                resolver.add(name, "TXT", text)
    return resolver


@dataclass(frozen=True)
class Case:
    scenario: str
    name: str
    data: dict[str, Any]
    zone: dict[str, list[Any]]


def load_cases() -> list[Case]:
    cases = []
    for scenario in yaml.safe_load_all(fetch_suite()):
        for name, data in scenario["tests"].items():
            cases.append(Case(scenario["description"], name, data, scenario["zonedata"]))
    return cases


def _params() -> list[Any]:
    try:
        cases = load_cases()
    except (OSError, RuntimeError, subprocess.SubprocessError, tarfile.TarError) as exc:
        return [pytest.param(exc, id="download")]
    return [pytest.param(c, id=c.name) for c in cases]


PARAMS = _params()


def test_the_whole_suite_is_there() -> None:
    """All 203 cases were loaded (a short file must not pass as "all green")."""
    assert len(PARAMS) == CASES_EXPECTED, PARAMS[:1]


@pytest.mark.parametrize("case", PARAMS)
def test_case(case: Case | Exception) -> None:
    if isinstance(case, Exception):
        pytest.fail(f"the RFC 7208 test suite could not be fetched: {case}")
    resolver = build_resolver(case.zone)
    data = case.data
    answer = asyncio.run(check_identity(data["host"], data["mailfrom"], data["helo"],
                                        resolver, default_explanation="DEFAULT"))
    wanted = data["result"] if isinstance(data["result"], list) else [data["result"]]
    assert answer.result.value in wanted, (
        f"{case.scenario}: {case.name} (RFC 7208 {data.get('spec')}): got "
        f"{answer.result.value} ({answer.explanation}), want {wanted}")
    if "explanation" in data:
        assert answer.explanation == data["explanation"], f"{case.name}"
