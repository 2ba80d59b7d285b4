"""tests/fixtures/vectors.json is exactly what the pinned Node modules produce: the generator
(tests/interop/node/make-vectors.js, `make vectors`) is run again and must write the same bytes,
so a hand edit or a module upgrade without `make vectors` fails here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

VECTORS = Path(__file__).resolve().parent.parent / "fixtures" / "vectors.json"


def test_committed_vectors_are_what_the_pinned_modules_produce(node_peers: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "vectors.json"
    cmd = ["node", "make-vectors.js", str(fresh)]
    done = subprocess.run(cmd, cwd=node_peers, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    committed, regenerated = VECTORS.read_bytes(), fresh.read_bytes()
    if committed != regenerated:
        # Name the sections that differ, so the failure says where to look.
        old, new = json.loads(committed), json.loads(regenerated)
        stale = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        where = stale or "formatting only"
        raise AssertionError(f"tests/fixtures/vectors.json is stale ({where}): run `make vectors`")
