// Grants the function identity Microsoft Sentinel Contributor on one Log Analytics workspace
// and reports the workspace GUID (customerId) that the STIX upload API addresses.
//
// A module of its own because the workspace usually lives in a security team's resource
// group, often in another subscription: main.bicep deploys this file there.

@description('Name of the existing Log Analytics workspace with Microsoft Sentinel enabled.')
param workspaceName string

@description('Object id of the function app system-assigned identity.')
param principalId string

// Microsoft Sentinel Contributor: enough to upload threat intelligence, scoped to this
// workspace only.
var sentinelContributorRoleId = 'ab8e14d6-4a74-4a29-9ba8-549422addade'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource sentinelContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, sentinelContributorRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId(
      'Microsoft.Authorization/roleDefinitions',
      sentinelContributorRoleId
    )
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

@description('Workspace GUID for SENTINEL_WORKSPACE_ID (not the ARM resource id).')
output workspaceCustomerId string = workspace.properties.customerId
