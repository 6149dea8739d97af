"""Shared fixtures.

``sarif_schema``: the official SARIF 2.1.0 JSON schema, to validate ``--format sarif`` against. It is not
committed (third-party file); it is fetched once from the npm registry, from a pinned package tarball
checked against its sha512, and kept under ``.cache/sarif-schema/``. ``LORALINT_SARIF_SCHEMA=FILE`` uses a
local copy instead. The test is skipped, with the reason, only when no source can be reached.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SARIF_CACHE = ROOT / ".cache" / "sarif-schema" / "sarif-2.1.0.json"

#: (npm spec, tarball URL, sha512 integrity, member): first the schema the SARIF SDK ships (MIT, the 2.1.0
#: text with its errata), then, much smaller, the 2.1.0-rtm.5 schema of Microsoft's jest-sarif (MIT).
SARIF_SOURCES = [
    ("@microsoft/sarif-multitool-linux@5.7.0",
     "https://registry.npmjs.org/@microsoft/sarif-multitool-linux/-/sarif-multitool-linux-5.7.0.tgz",
     "sha512-NxUbpq6ISCWoTQ/NfOYEwEDKq1Heka/rMoJ5R5LMydcAZQX/X7g5mWHcgxDub+0M07LC96tZ5LZHvF1Qy3gjTA==",
     "package/sarif-2.1.0.json"),
    ("@microsoft/jest-sarif@1.0.0-beta.0",
     "https://registry.npmjs.org/@microsoft/jest-sarif/-/jest-sarif-1.0.0-beta.0.tgz",
     "sha512-A1fOhPd6Ic5iDk4F9YPw1qNB4XF+7+IviR7xl8r2F6QzQkx5cpY9LsGk2rExiFIEcBbjpVnSmwWGBukASkiQ9A==",
     "package/lib/schemas/sarif-2.1.0-rtm.5.json"),
]


def _tarball(spec: str, url: str) -> bytes:
    if shutil.which("npm"):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", tmp],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                return Path(tmp, json.loads(proc.stdout)[0]["filename"]).read_bytes()
    with urllib.request.urlopen(url, timeout=300) as r:
        return r.read()


def _fetch_sarif_schema() -> tuple[dict | None, list[str]]:
    problems = []
    for spec, url, integrity, member in SARIF_SOURCES:
        try:
            data = _tarball(spec, url)
            got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
            if got != integrity:
                raise RuntimeError(f"tarball does not match {integrity}")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
                fh = tf.extractfile(member)
                if fh is None:
                    raise RuntimeError(f"no {member} in the tarball")
                text = fh.read()
            schema = json.loads(text)
            SARIF_CACHE.parent.mkdir(parents=True, exist_ok=True)
            SARIF_CACHE.write_bytes(text)
            SARIF_CACHE.with_suffix(".source").write_text(f"{spec} {member}\n")
            return schema, problems
        except Exception as e:  # noqa: BLE001 - any failure: try the next source, report all if none works
            problems.append(f"{spec}: {type(e).__name__}: {e}")
    return None, problems


@pytest.fixture(scope="session")
def sarif_schema() -> dict:
    local = os.environ.get("LORALINT_SARIF_SCHEMA")
    if local:
        return json.loads(Path(local).read_text())
    if SARIF_CACHE.exists():
        return json.loads(SARIF_CACHE.read_text())
    schema, problems = _fetch_sarif_schema()
    if schema is None:
        pytest.skip("the SARIF 2.1.0 schema could not be fetched from the npm registry: " + "; ".join(problems))
    return schema
