"""Checks host.json and the function.json files that make up the deployed app root.

These files tell the Functions host how to start the Rust handler and which triggers to
route to it. A typo in them is only seen after a deployment, so they are checked here,
together with their links to main.bicep (the %SETTING% names they use) and to
scripts/package.sh (the folders it ships). Missing files fail: nothing here is skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_JSON = REPO_ROOT / "host.json"
PACKAGE_SCRIPT = REPO_ROOT / "scripts" / "package.sh"
MAIN_BICEP = REPO_ROOT / "infra" / "main.bicep"

EXECUTABLE = "threatfox-sentinel"
FUNCTIONS = {"ScheduledImport", "ImportNow"}


def load_json(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(REPO_ROOT)} is missing"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        pytest.fail(f"{path.relative_to(REPO_ROOT)} is not valid JSON: {error}")


def function_json(name: str) -> dict[str, Any]:
    return load_json(REPO_ROOT / name / "function.json")


def bindings_named(function: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [binding for binding in function.get("bindings", []) if binding.get("name") == name]


def single_binding(function_name: str, binding_name: str) -> dict[str, Any]:
    found = bindings_named(function_json(function_name), binding_name)
    assert len(found) == 1, f"{function_name}: expected one binding named {binding_name}"
    return found[0]


def test_host_json_starts_the_handler_binary_with_serve():
    host = load_json(HOST_JSON)
    handler = host["customHandler"]
    description = handler["description"]

    assert host.get("version") == "2.0"
    assert description["defaultExecutablePath"] == EXECUTABLE
    assert description.get("arguments") == ["serve"]
    # Forwarding would bypass the invocation protocol the handler implements.
    assert handler.get("enableForwardingHttpRequest", False) is False


def test_function_folders_at_the_repo_root_are_exactly_the_two_functions():
    folders = {path.parent.name for path in REPO_ROOT.glob("*/function.json")}

    assert folders == FUNCTIONS


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_json_is_valid_json_with_bindings(name: str):
    function = function_json(name)

    assert isinstance(function.get("bindings"), list) and function["bindings"]
    for binding in function["bindings"]:
        assert {"type", "name", "direction"} <= set(binding), f"{name}: {binding}"


def test_scheduled_import_is_a_timer_driven_by_the_import_schedule_setting():
    timer = single_binding("ScheduledImport", "timer")

    assert timer["type"] == "timerTrigger"
    assert timer["direction"] == "in"
    assert timer["schedule"] == "%IMPORT_SCHEDULE%"


def test_import_now_is_a_function_key_protected_post_on_the_import_route():
    trigger = single_binding("ImportNow", "req")
    output = single_binding("ImportNow", "res")

    assert trigger["type"] == "httpTrigger"
    assert trigger["direction"] == "in"
    assert trigger["authLevel"] == "function"
    assert trigger["methods"] == ["post"]
    assert trigger["route"] == "import"
    assert output["type"] == "http"
    assert output["direction"] == "out"


def test_settings_named_in_function_json_are_set_by_the_template():
    bicep = MAIN_BICEP.read_text()
    referenced = set()
    for name in FUNCTIONS:
        text = json.dumps(function_json(name))
        referenced |= set(re.findall(r"%(\w+)%", text))

    missing = {setting for setting in referenced if not re.search(rf"\b{setting}:", bicep)}

    assert referenced, "expected at least the %IMPORT_SCHEDULE% reference"
    assert not missing, f"function.json uses settings main.bicep never sets: {missing}"


def test_package_script_ships_host_json_and_every_function_folder():
    script = PACKAGE_SCRIPT.read_text()

    for item in ["host.json", *sorted(FUNCTIONS)]:
        assert item in script, f"scripts/package.sh does not ship {item}"
