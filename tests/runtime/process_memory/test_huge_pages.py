"""Both CLIs start themselves once more with glibc.malloc.hugetlb=1 in GLIBC_TUNABLES, and a user's setting stands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.process_memory.huge_pages import TUNABLE, huge_pages_supported, tunables_with_huge_pages

needs_support = pytest.mark.skipif(not huge_pages_supported(), reason="needs Linux, glibc >= 2.35 and transparent huge pages not 'never'")
PRINT_TUNABLES = (
    "from runtime.process_memory.huge_pages import restart_with_huge_pages as restart; restart(); "
    "import os; print(os.environ.get('GLIBC_TUNABLES'))"
)


@pytest.mark.parametrize(
    "current,expected",
    [
        (None, f"{TUNABLE}=1"),
        ("", f"{TUNABLE}=1"),
        ("glibc.malloc.arena_max=2", f"glibc.malloc.arena_max=2:{TUNABLE}=1"),
        (f"{TUNABLE}=0", None),  # the user's choice stands
        (f"glibc.malloc.arena_max=2:{TUNABLE}=1", None),
        ("glibc.malloc.hugetlbx=1", f"glibc.malloc.hugetlbx=1:{TUNABLE}=1"),  # another name, not this tunable
    ],
)
def test_the_tunable_is_added_unless_named_already(current, expected):
    assert tunables_with_huge_pages(current) == expected


def _environment(tunables: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    return env


@needs_support
@pytest.mark.parametrize(
    "given,seen",
    [(None, f"{TUNABLE}=1"), ("glibc.malloc.arena_max=2", f"glibc.malloc.arena_max=2:{TUNABLE}=1"), (f"{TUNABLE}=0", f"{TUNABLE}=0")],
)
def test_the_python_process_restarts_with_the_tunable_and_its_arguments(given, seen):
    done = subprocess.run([sys.executable, "-c", PRINT_TUNABLES], env=_environment(given), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == seen


@needs_support
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see glsnet-cpp's exec")
def test_glsnet_cpp_execs_itself_once_with_the_tunable(tmp_path: Path):
    from tests.runtime.cpp.test_cpp_runtime import _build

    cpp = _build("cpp") / "glsnet-cpp"
    log = tmp_path / "strace.log"
    done = subprocess.run(["strace", "-f", "-v", "-s", "256", "-e", "trace=execve", "-o", str(log), str(cpp), "--help"],
                          env=_environment(None), capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert "Usage: glsnet-cpp run" in done.stdout  # the restarted process still got its arguments
    execs = [line for line in log.read_text().splitlines() if "execve(" in line and "= 0" in line]
    assert len(execs) == 2, execs
    assert f'"GLIBC_TUNABLES={TUNABLE}=1"' not in execs[0] and f'"GLIBC_TUNABLES={TUNABLE}=1"' in execs[1]


@needs_support
def test_glsnet_restarts_before_it_imports_the_cli():
    """`glsnet` (python -m runtime) restarts before typer and runtime.cli are imported, so each is imported once."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "runtime", "--help"], env=_environment(None),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "run" in done.stdout  # the restarted process got its arguments
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("runtime.process_memory.huge_pages") == 2  # one import per interpreter: it did restart
    assert imported.count("typer") == 1 and imported.count("runtime.cli") == 1
