"""Runs scripts/package.sh --skip-build on a stand-in binary and inspects the zip.

No cargo here: the build itself is the Rust side's business. What this checks is the part
that breaks deployments quietly: the app root layout inside the zip and the exec bit on
the handler, which the Functions host needs to start it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "package.sh"
FUNCTION_FOLDERS = ("ScheduledImport", "ImportNow")


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def stand_in_binary(tmp_path: Path) -> Path:
    binary = tmp_path / "built" / "handler"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    # Deliberately not executable: the script must set the mode itself.
    binary.chmod(0o644)
    return binary


def expected_entries() -> set[str]:
    entries = {"host.json", "threatfox-sentinel"}
    for folder in FUNCTION_FOLDERS:
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.is_file():
                entries.add(path.relative_to(REPO_ROOT).as_posix())
    return entries


def test_skip_build_packages_the_app_root_with_an_executable_handler(
    tmp_path: Path, stand_in_binary: Path
):
    dist = tmp_path / "dist"
    env = {"BINARY": str(stand_in_binary), "DIST_DIR": str(dist)}

    result = run_script("--skip-build", env=env)

    assert result.returncode == 0, result.stderr
    archive = dist / "threatfox-sentinel.zip"
    assert str(archive) in result.stdout
    with zipfile.ZipFile(archive) as zf:
        entries = {info.filename: info for info in zf.infolist()}
        handler = entries["threatfox-sentinel"]
        assert zf.read(handler) == stand_in_binary.read_bytes()
    assert set(entries) == expected_entries()
    assert handler.create_system == 3
    assert stat.S_IMODE(handler.external_attr >> 16) == 0o755
    assert stat.S_IMODE((dist / "package" / "threatfox-sentinel").stat().st_mode) == 0o755
    # The listing printed at the end shows the mode, so a lost exec bit is visible.
    assert "-rwxr-xr-x" in result.stdout


def test_skip_build_without_binary_fails_with_a_hint(tmp_path: Path):
    env = {"DIST_DIR": str(tmp_path / "dist"), "BINARY": ""}

    result = run_script("--skip-build", env=env)

    assert result.returncode != 0
    assert "BINARY" in result.stderr
    assert not (tmp_path / "dist").exists()


def test_unknown_options_are_rejected(tmp_path: Path):
    result = run_script("--release", env={"DIST_DIR": str(tmp_path / "dist")})

    assert result.returncode != 0
    assert "unknown option" in result.stderr
