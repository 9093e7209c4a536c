"""Offline checks of the Bicep templates under infra/.

The Bicep CLI cannot run here, so pycep-parser turns each file into a JSON-like tree and
these tests assert what matters for security and for the handler: the exact permissions
granted, the hardening switches, and the app settings the Rust code reads. pycep keeps
expressions symbolic, so a bare identifier and a string literal of the same text look alike;
the helpers resolve identifiers through the file's variables where that matters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from lark.exceptions import LarkError
from pycep import BicepParser

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
MAIN = INFRA / "main.bicep"
SENTINEL_MODULE = INFRA / "modules" / "sentinel-role.bicep"

STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
SENTINEL_CONTRIBUTOR = "ab8e14d6-4a74-4a29-9ba8-549422addade"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
THREAT_INDICATORS_READWRITE_OWNEDBY = "21792b6c-c986-4ffc-85de-df9da54b52fa"

# The only GUIDs any template may contain. A new role id anywhere fails the suite, so a
# broader grant cannot slip in through a variable or a module.
ALLOWED_GUIDS = {
    STORAGE_BLOB_DATA_OWNER,
    KEY_VAULT_SECRETS_USER,
    SENTINEL_CONTRIBUTOR,
    GRAPH_APP_ID,
    THREAT_INDICATORS_READWRITE_OWNEDBY,
}

GRAPH_EXTENSION_REF = "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:1.0.0"

# Every app setting main.bicep may write, in one place. For settings the handler reads
# with a default, the value is (Bicep parameter, default that must match the code);
# None marks settings computed from other resources.
APP_SETTINGS: dict[str, tuple[str, Any] | None] = {
    "AzureWebJobsStorage__accountName": None,
    "APPLICATIONINSIGHTS_CONNECTION_STRING": None,
    "THREATFOX_AUTH_KEY": None,
    "AZURE_TENANT_ID": None,
    "IMPORT_SINK": None,
    "SENTINEL_WORKSPACE_ID": None,
    "IMPORT_DAYS": ("importDays", 1),
    "INDICATOR_EXPIRATION_DAYS": ("indicatorExpirationDays", 90),
    "INDICATOR_ACTION": ("indicatorAction", "alert"),
    "MIN_CONFIDENCE": ("minConfidence", 0),
    "IOC_TYPES": ("iocTypes", ""),
    "GRAPH_TARGET_PRODUCT": ("graphTargetProduct", "Azure Sentinel"),
    "SENTINEL_SOURCE_SYSTEM": ("sentinelSourceSystem", "ThreatFox"),
    "IMPORT_SCHEDULE": ("importSchedule", "0 0 1 * * *"),
    "LOG_FORMAT": ("logFormat", "json"),
}

# Flex Consumption rejects these; the runtime comes from functionAppConfig instead.
FORBIDDEN_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
}

EXPECTED_OUTPUTS = {
    "functionAppName",
    "functionAppHostName",
    "principalId",
    "storageAccountName",
    "keyVaultName",
}

GUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@cache
def parser() -> BicepParser:
    return BicepParser()


@cache
def parse(path: Path) -> dict[str, Any]:
    return parser().parse(file_path=path)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """Returns a resource's or module's properties with any `if (...)` condition removed."""
    config = resource["config"]
    if "condition" in config:
        return config["config"]
    return config


def condition(resource: dict[str, Any]) -> Any:
    return resource["config"].get("condition")


def resolve(doc: dict[str, Any], value: Any) -> Any:
    """Follows a bare identifier through variables and parameter defaults."""
    seen = set()
    while isinstance(value, str) and value not in seen:
        seen.add(value)
        if value in doc.get("variables", {}):
            value = doc["variables"][value]["value"]
        elif value in doc.get("parameters", {}):
            value = doc["parameters"][value].get("default")
        else:
            break
    return value


def accessor_path(value: Any) -> list[str]:
    """Flattens `a.b.c` (nested property_accessor nodes) into ["a", "b", "c"]."""
    if isinstance(value, str):
        return [value]
    operator = value.get("operator", {}) if isinstance(value, dict) else {}
    if operator.get("type") != "property_accessor":
        raise AssertionError(f"not a property access: {value!r}")
    operands = operator["operands"]
    return accessor_path(operands["operand_1"]) + accessor_path(operands["operand_2"])


def function_call(value: Any, name: str) -> dict[str, Any]:
    assert isinstance(value, dict) and "function" in value, f"not a call: {value!r}"
    function = value["function"]
    assert function["type"] == name, f"expected {name}(), found {function['type']}()"
    return function.get("parameters", {})


def all_resources() -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for path in bicep_files():
        for name, resource in parse(path).get("resources", {}).items():
            yield path, name, resource


def resources_of_type(doc: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in doc.get("resources", {}).items()
        if resource["type"] == resource_type
    }


def single_resource(doc: dict[str, Any], resource_type: str) -> dict[str, Any]:
    found = resources_of_type(doc, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return body(next(iter(found.values())))


def collect_setting_keys(doc: dict[str, Any], value: Any) -> set[str]:
    """Names of the settings an app settings expression can produce, in every branch."""
    value = resolve(doc, value)
    if isinstance(value, dict) and "function" in value:
        function = value["function"]
        assert function["type"] == "union", f"unexpected {function['type']}() in settings"
        keys: set[str] = set()
        for argument in function["parameters"].values():
            keys |= collect_setting_keys(doc, argument)
        return keys
    if isinstance(value, dict) and "operator" in value:
        operator = value["operator"]
        assert operator["type"] == "conditional", f"unexpected {operator['type']} in settings"
        operands = operator["operands"]
        return collect_setting_keys(doc, operands["true_value"]) | collect_setting_keys(
            doc, operands["false_value"]
        )
    assert isinstance(value, dict), f"app settings must be an object, found {value!r}"
    return set(value)


def setting_values(doc: dict[str, Any], value: Any) -> dict[str, Any]:
    """Setting name to its (symbolic) value, merged over every branch."""
    value = resolve(doc, value)
    if isinstance(value, dict) and "function" in value:
        merged: dict[str, Any] = {}
        for argument in value["function"]["parameters"].values():
            merged.update(setting_values(doc, argument))
        return merged
    if isinstance(value, dict) and "operator" in value:
        operands = value["operator"]["operands"]
        merged = setting_values(doc, operands["false_value"])
        merged.update(setting_values(doc, operands["true_value"]))
        return merged
    return dict(value)


def app_settings_resource(doc: dict[str, Any]) -> dict[str, Any]:
    configs = resources_of_type(doc, "Microsoft.Web/sites/config")
    settings = [body(r) for r in configs.values() if body(r)["name"] == "appsettings"]
    assert len(settings) == 1, "main.bicep must write app settings in one sites/config"
    return settings[0]


# ---------------------------------------------------------------------------------------
# Syntax
# ---------------------------------------------------------------------------------------


def test_infra_holds_the_main_template_and_the_sentinel_module():
    assert MAIN in bicep_files()
    assert SENTINEL_MODULE in bicep_files()


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(path: Path):
    doc = parse(path)

    assert doc.get("resources"), f"{path} declares no resources"


def test_parser_rejects_broken_bicep():
    # Guards against a parser that silently accepts anything: a syntax check that never
    # fails proves nothing.
    with pytest.raises(LarkError):
        parser().parse(text="resource sa 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n")


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_lines_fit_in_100_columns(path: Path):
    long_lines = [
        number
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if len(line) > 100
    ]

    assert not long_lines, f"{path.name}: lines over 100 columns: {long_lines}"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_parameter_and_output_has_a_description(path: Path):
    doc = parse(path)
    entries = {**doc.get("parameters", {}), **doc.get("outputs", {})}

    undocumented = [
        name
        for name, entry in entries.items()
        if not any(d["type"] == "description" and d.get("argument") for d in entry["decorators"])
    ]

    assert not undocumented, f"{path.name}: no @description on {undocumented}"


# ---------------------------------------------------------------------------------------
# Graph extension
# ---------------------------------------------------------------------------------------


def test_main_template_opens_with_the_graph_extension():
    code_lines = [
        line.strip()
        for line in MAIN.read_text().splitlines()
        if line.strip() and not line.strip().startswith("//")
    ]

    assert code_lines[0] == "extension microsoftGraphV1"
    assert "microsoftGraphV1" in parse(MAIN)["extensions"]


def test_bicepconfig_declares_the_graph_extension():
    config = json.loads((INFRA / "bicepconfig.json").read_text())

    assert config["extensions"]["microsoftGraphV1"] == GRAPH_EXTENSION_REF


# ---------------------------------------------------------------------------------------
# Permissions
# ---------------------------------------------------------------------------------------


def test_only_the_expected_guids_appear_in_any_template():
    found = set()
    for path in bicep_files():
        found |= {guid.lower() for guid in GUID_PATTERN.findall(path.read_text())}

    assert found == ALLOWED_GUIDS


def test_no_custom_role_definitions_or_other_graph_objects_are_created():
    types = {resource["type"] for _, _, resource in all_resources()}

    assert "Microsoft.Authorization/roleDefinitions" not in types
    assert {t for t in types if t.startswith("Microsoft.Graph/")} == {
        "Microsoft.Graph/servicePrincipals",
        "Microsoft.Graph/appRoleAssignedTo",
    }


def test_azure_role_assignments_are_exactly_the_expected_three():
    granted = set()
    for path, name, resource in all_resources():
        if resource["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        doc = parse(path)
        config = body(resource)
        properties = config["properties"]
        role = function_call(properties["roleDefinitionId"], "subscription_resource_id")
        assert role["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        role_id = resolve(doc, role["resource_name_1"])
        scope = config.get("scope")
        assert scope in doc["resources"], f"{name}: scope must be a declared resource"

        assert properties["principalType"] == "ServicePrincipal", name
        granted.add((path.name, name, doc["resources"][scope]["type"], role_id))

    assert granted == {
        (
            "main.bicep",
            "storageBlobOwner",
            "Microsoft.Storage/storageAccounts",
            STORAGE_BLOB_DATA_OWNER,
        ),
        (
            "main.bicep",
            "authKeyReader",
            "Microsoft.KeyVault/vaults/secrets",
            KEY_VAULT_SECRETS_USER,
        ),
        (
            "sentinel-role.bicep",
            "sentinelContributor",
            "Microsoft.OperationalInsights/workspaces",
            SENTINEL_CONTRIBUTOR,
        ),
    }


def test_main_role_assignments_target_the_function_identity_and_the_right_objects():
    doc = parse(MAIN)
    resources = doc["resources"]
    storage_grant = body(resources["storageBlobOwner"])
    secret_grant = body(resources["authKeyReader"])
    secret = body(resources[secret_grant["scope"]])

    assert storage_grant["scope"] == "storage"
    assert resources["storage"]["type"] == "Microsoft.Storage/storageAccounts"
    assert resolve(doc, secret["name"]) == "threatfox-auth-key"
    for grant in (storage_grant, secret_grant):
        principal = accessor_path(grant["properties"]["principalId"])
        assert principal == ["functionApp", "identity", "principalId"]


def test_sentinel_grant_is_conditional_and_made_on_the_given_workspace():
    main = parse(MAIN)
    module_doc = parse(SENTINEL_MODULE)
    module = main["modules"]["sentinelRole"]
    params = body(module)["params"]
    scope = function_call(body(module)["scope"], "resource_group")
    grant = body(module_doc["resources"]["sentinelContributor"])
    workspace = module_doc["resources"][grant["scope"]]

    assert module["detail"]["path"] == "modules/sentinel-role.bicep"
    assert condition(module) == "useSentinel"
    assert accessor_path(params["principalId"]) == ["functionApp", "identity", "principalId"]
    assert grant["properties"]["principalId"] == "principalId"
    assert workspace["existing"] is True
    assert body(workspace)["name"] == "workspaceName"
    # Subscription, resource group and name come from segments 2, 4 and 8 of the id.
    indexes = {
        key: value["operator"]["operands"]["operand_2"]
        for key, value in {**scope, "workspaceName": params["workspaceName"]}.items()
    }
    assert indexes == {"subscription_id": 2, "resource_group_name": 4, "workspaceName": 8}
    assert accessor_path(module_doc["outputs"]["workspaceCustomerId"]["value"]) == [
        "workspace",
        "properties",
        "customerId",
    ]


def test_graph_app_role_is_threat_indicators_owned_by_and_conditional():
    doc = parse(MAIN)
    assignments = resources_of_type(doc, "Microsoft.Graph/appRoleAssignedTo")
    lookups = resources_of_type(doc, "Microsoft.Graph/servicePrincipals")
    assert len(assignments) == 1 and len(lookups) == 1
    (assignment,) = assignments.values()
    (lookup_name, lookup) = next(iter(lookups.items()))
    config = body(assignment)

    assert condition(assignment) == "grantGraphRole"
    assert condition(lookup) == "grantGraphRole"
    assert lookup["existing"] is True
    assert resolve(doc, body(lookup)["appId"]) == GRAPH_APP_ID
    assert resolve(doc, config["appRoleId"]) == THREAT_INDICATORS_READWRITE_OWNEDBY
    assert accessor_path(config["resourceId"]) == [lookup_name, "id"]
    assert accessor_path(config["principalId"]) == ["functionApp", "identity", "principalId"]
    assert doc["parameters"]["grantGraphRole"]["default"] is True


# ---------------------------------------------------------------------------------------
# Hardening
# ---------------------------------------------------------------------------------------


def test_plan_is_linux_flex_consumption():
    plan = single_resource(parse(MAIN), "Microsoft.Web/serverfarms")

    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True


def test_function_app_is_hardened_flex_custom_handler():
    doc = parse(MAIN)
    app = single_resource(doc, "Microsoft.Web/sites")
    properties = app["properties"]
    flex = properties["functionAppConfig"]
    scale = flex["scaleAndConcurrency"]
    deployment = flex["deployment"]["storage"]

    assert app["kind"] == "functionapp,linux"
    assert app["identity"] == {"type": "SystemAssigned"}
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["ftpsState"] == "Disabled"
    assert flex["runtime"] == {"name": "custom", "version": "1.0"}
    assert deployment["type"] == "blobContainer"
    assert deployment["authentication"] == {"type": "SystemAssignedIdentity"}
    assert resolve(doc, scale["instanceMemoryMB"]) == 2048
    assert 40 <= resolve(doc, scale["maximumInstanceCount"]) <= 1000


def test_basic_publishing_credentials_are_disabled_for_ftp_and_scm():
    doc = parse(MAIN)
    policies = resources_of_type(doc, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")

    names = {body(p)["name"]: body(p)["properties"]["allow"] for p in policies.values()}

    assert names == {"ftp": False, "scm": False}


def test_storage_account_accepts_only_identity_based_tls_access():
    doc = parse(MAIN)
    storage = single_resource(doc, "Microsoft.Storage/storageAccounts")
    properties = storage["properties"]

    assert storage["kind"] == "StorageV2"
    assert storage["sku"] == {"name": "Standard_LRS"}
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True


def test_storage_holds_the_package_and_checkpoint_containers():
    doc = parse(MAIN)
    containers = resources_of_type(doc, "Microsoft.Storage/storageAccounts/blobServices/containers")
    names = {resolve(doc, body(c)["name"]) for c in containers.values()}
    app = single_resource(doc, "Microsoft.Web/sites")
    package_url = app["properties"]["functionAppConfig"]["deployment"]["storage"]["value"]
    package_container = re.search(r"\$\{(\w+)\}$", package_url).group(1)

    assert names == {"threatfox-sentinel", resolve(doc, package_container)}
    assert all(body(c)["properties"]["publicAccess"] == "None" for c in containers.values())


def test_key_vault_uses_rbac_and_holds_the_key_from_a_secure_parameter():
    doc = parse(MAIN)
    vault = single_resource(doc, "Microsoft.KeyVault/vaults")["properties"]
    secret = single_resource(doc, "Microsoft.KeyVault/vaults/secrets")
    key_param = doc["parameters"]["threatfoxAuthKey"]

    assert vault["enableRbacAuthorization"] is True
    assert vault["enableSoftDelete"] is True
    assert "enablePurgeProtection" in vault
    assert resolve(doc, secret["name"]) == "threatfox-auth-key"
    assert secret["properties"]["value"] == "threatfoxAuthKey"
    assert any(d["type"] == "secure" for d in key_param["decorators"])
    assert key_param.get("default") is None


def test_outputs_are_the_documented_five():
    assert set(parse(MAIN)["outputs"]) == EXPECTED_OUTPUTS


# ---------------------------------------------------------------------------------------
# App settings
# ---------------------------------------------------------------------------------------


def test_app_settings_are_exactly_the_known_list():
    doc = parse(MAIN)
    settings = app_settings_resource(doc)

    names = collect_setting_keys(doc, settings["properties"])

    assert names == set(APP_SETTINGS)


def test_app_settings_avoid_names_flex_consumption_forbids():
    doc = parse(MAIN)

    names = collect_setting_keys(doc, app_settings_resource(doc)["properties"])

    assert not names & FORBIDDEN_SETTINGS
    assert not set(APP_SETTINGS) & FORBIDDEN_SETTINGS
    # Nor anywhere else in the templates, e.g. in siteConfig.appSettings.
    for path in bicep_files():
        text = path.read_text()
        lines = [line for line in text.splitlines() if not line.strip().startswith("//")]
        for name in FORBIDDEN_SETTINGS:
            assert not any(name in line for line in lines), f"{name} set in {path.name}"


def test_app_settings_are_written_after_the_grants_they_rely_on():
    doc = parse(MAIN)

    depends_on = set(app_settings_resource(doc)["dependsOn"])

    assert {"storageBlobOwner", "authKeyReader", "sentinelRole"} <= depends_on


@pytest.mark.parametrize(
    "setting", [name for name, spec in APP_SETTINGS.items() if spec is not None]
)
def test_tunable_settings_come_from_parameters_with_the_code_defaults(setting: str):
    doc = parse(MAIN)
    parameter, default = APP_SETTINGS[setting]
    value = setting_values(doc, app_settings_resource(doc)["properties"])[setting]

    if isinstance(default, int):
        value = function_call(value, "string")["value_to_convert"]

    assert value == parameter
    assert doc["parameters"][parameter]["default"] == default


def test_computed_settings_point_at_the_right_sources():
    doc = parse(MAIN)
    values = setting_values(doc, app_settings_resource(doc)["properties"])
    sink = values["IMPORT_SINK"]["operator"]["operands"]

    assert accessor_path(values["AzureWebJobsStorage__accountName"]) == ["storage", "name"]
    assert accessor_path(values["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == [
        "appInsights",
        "properties",
        "ConnectionString",
    ]
    assert values["THREATFOX_AUTH_KEY"] == (
        "@Microsoft.KeyVault(SecretUri=${authKeySecret.properties.secretUri})"
    )
    assert sink == {"condition": "useSentinel", "true_value": "sentinel", "false_value": "graph"}
    assert accessor_path(values["SENTINEL_WORKSPACE_ID"]) == [
        "sentinelRole",
        "outputs",
        "workspaceCustomerId",
    ]
    tenant = values["AZURE_TENANT_ID"]["operator"]["operands"]
    assert tenant["operand_1"] == {"function": {"type": "tenant"}}
    assert tenant["operand_2"] == "tenantId"


# ---------------------------------------------------------------------------------------
# Example parameters file
# ---------------------------------------------------------------------------------------


def test_example_parameters_file_names_only_real_parameters_and_no_secret():
    example = json.loads((INFRA / "main.parameters.example.json").read_text())
    parameters = parse(MAIN)["parameters"]

    assert example["$schema"].endswith("/deploymentParameters.json#")
    assert set(example["parameters"]) <= set(parameters)
    assert "threatfoxAuthKey" not in example["parameters"]
    for name, entry in example["parameters"].items():
        assert set(entry) == {"value"}, f"{name}: expected a plain value"
