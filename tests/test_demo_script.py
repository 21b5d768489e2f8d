"""The newcomer's demo (issue 13, item 7): one conversion and one gate, no `error:` line for a kept result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.sh"


def test_the_demo_converts_and_gates_fp16_once():
    text = DEMO.read_text()
    builds = [line for line in text.splitlines() if re.search(r'glsnet-export"? build', line) and not line.lstrip().startswith("#")]
    assert len(builds) == 1, builds  # before: a failing build (printing `error:`), then the same build again with --force
    assert "--force" in builds[0]
    assert subprocess.run(["bash", "-n", str(DEMO)]).returncode == 0


def test_the_demo_explains_a_kept_refusal_in_one_demo_line(tmp_path):
    """The check the demo runs on the manifest after the build: exit 1 (and so the demo: line) only for a refused gate."""
    snippet = re.search(r"-c '([^']+)'", DEMO.read_text()).group(1)
    for passed, code in ((True, 0), (False, 1)):
        manifest = tmp_path / f"{passed}.json"
        manifest.write_text(json.dumps({"accuracy": {"fp16": {"passed": passed, "forced": True}}}))
        assert subprocess.run([sys.executable, "-c", snippet, str(manifest)]).returncode == code
    lines = [line for line in DEMO.read_text().splitlines() if "echo \"demo: the gate refused" in line]
    assert len(lines) == 1
