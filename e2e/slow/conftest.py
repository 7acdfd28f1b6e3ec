"""Fixtures for the slow evidence checks (scripts/evidence-check).

The parent e2e/conftest.py provides pg, launcher, mint and the rest. This folder is left out of
`pytest e2e` (scripts/test) by collect_ignore below; naming the file runs it:

    python3 -m pytest e2e/slow/test_evidence_slow.py -q -p no:cacheprovider -s

When scripts/evidence-check started an issuer (CUSTOS_OIDC_ISSUER and CUSTOS_OIDC_STATE), the
tests use it instead of an in-process one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent / "scripts" / "peers"))

import oidc_issuer  # noqa: E402

# Slow: only when named explicitly (pytest still collects a file given on its command line).
collect_ignore = ["test_evidence_slow.py"]


@dataclass
class ExternalIssuer:
    url: str
    state: Path

    def stop(self) -> None:
        pass


@pytest.fixture(scope="session")
def issuer(tmp_path_factory):
    url, state = os.environ.get("CUSTOS_OIDC_ISSUER"), os.environ.get("CUSTOS_OIDC_STATE")
    if url and state and Path(state, "keys.json").exists():
        yield ExternalIssuer(url=url, state=Path(state))
        return
    server = oidc_issuer.start_server(tmp_path_factory.mktemp("oidc") / "state")
    yield server
    server.stop()
