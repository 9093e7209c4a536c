// Deploys threatfox-sentinel: a Rust custom handler on the Flex Consumption plan that imports
// ThreatFox IoCs into Microsoft Sentinel (STIX upload API) or Microsoft Graph tiIndicators.
//
// The function app runs as its own system-assigned identity and holds no keys: storage, Key
// Vault, Sentinel and Graph are all reached with Entra tokens. It is granted exactly four
// permissions, each on the narrowest scope that works:
//   - Storage Blob Data Owner on this deployment's storage account,
//   - Key Vault Secrets User on the one ThreatFox secret,
//   - Microsoft Sentinel Contributor on the chosen workspace (only when one is given),
//   - the Graph app role ThreatIndicators.ReadWrite.OwnedBy (only when grantGraphRole).
//
// Needs Bicep 0.36.1 or later for the Microsoft Graph extension (see bicepconfig.json).

// Graph app role assignments are Entra objects, not ARM resources: this extension lets the
// same deployment create them.
extension microsoftGraphV1

// ---------------------------------------------------------------------------------------
// Parameters: naming and placement
// ---------------------------------------------------------------------------------------

@description('Short prefix for every resource name: lowercase letters and digits, letter first.')
@minLength(2)
@maxLength(10)
param namePrefix string = 'tfox'

@description('Azure region for all resources; it must offer the Flex Consumption plan.')
param location string = resourceGroup().location

// ---------------------------------------------------------------------------------------
// Parameters: secrets and access
// ---------------------------------------------------------------------------------------

@description('ThreatFox Auth-Key from auth.abuse.ch; stored in Key Vault, never in settings.')
@secure()
param threatfoxAuthKey string

@description('Grant the Graph app role ThreatIndicators.ReadWrite.OwnedBy to the function.')
param grantGraphRole bool = true

@description('Resource id of the Sentinel Log Analytics workspace; empty uses the Graph sink.')
param sentinelWorkspaceId string = ''

@description('Turn on Key Vault purge protection (irreversible once enabled on a vault).')
param enablePurgeProtection bool = true

@description('Days a deleted Key Vault or secret stays recoverable.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

// ---------------------------------------------------------------------------------------
// Parameters: Flex Consumption scale
// ---------------------------------------------------------------------------------------

@description('Memory of each Flex Consumption instance in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound on Flex Consumption instances for this app.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

// ---------------------------------------------------------------------------------------
// Parameters: import behaviour (app settings read by the handler; defaults match the code)
// ---------------------------------------------------------------------------------------

@description('Days of ThreatFox history fetched per run (IMPORT_DAYS, 1 to 7).')
@minValue(1)
@maxValue(7)
param importDays int = 1

@description('Days until an imported indicator expires (INDICATOR_EXPIRATION_DAYS).')
@minValue(1)
@maxValue(3650)
param indicatorExpirationDays int = 90

@description('Graph tiIndicator action for imported IoCs (INDICATOR_ACTION).')
@allowed([
  'unknown'
  'allow'
  'block'
  'alert'
])
param indicatorAction string = 'alert'

@description('Skip IoCs whose ThreatFox confidence is below this value (MIN_CONFIDENCE).')
@minValue(0)
@maxValue(100)
param minConfidence int = 0

@description('Comma-separated ThreatFox ioc_type values to import; empty imports all supported.')
param iocTypes string = ''

@description('Graph targetProduct for tiIndicators (GRAPH_TARGET_PRODUCT).')
@allowed([
  'Azure Sentinel'
  'Microsoft Defender ATP'
])
param graphTargetProduct string = 'Azure Sentinel'

@description('sourcesystem sent to the Sentinel upload API (SENTINEL_SOURCE_SYSTEM).')
param sentinelSourceSystem string = 'ThreatFox'

@description('Six-field NCRONTAB schedule of the timer import, in UTC (IMPORT_SCHEDULE).')
param importSchedule string = '0 0 1 * * *'

@description('Log line format of the handler (LOG_FORMAT): json for Azure, text for people.')
@allowed([
  'json'
  'text'
])
param logFormat string = 'json'

// ---------------------------------------------------------------------------------------
// Names and constants
// ---------------------------------------------------------------------------------------

var suffix = uniqueString(resourceGroup().id)

// Storage account names take only lowercase letters and digits; both these names stop at 24
// characters, so the suffix may lose its last character.
var compactPrefix = toLower(replace(namePrefix, '-', ''))
var storageAccountName = take('${compactPrefix}st${suffix}', 24)
var keyVaultName = take('${compactPrefix}kv${suffix}', 24)
var functionAppName = '${namePrefix}-func-${suffix}'
var planName = '${namePrefix}-plan-${suffix}'
var logAnalyticsName = '${namePrefix}-log-${suffix}'
var appInsightsName = '${namePrefix}-appi-${suffix}'

// Flex Consumption fetches the app package from this container.
var packageContainerName = 'app-package'
// The handler keeps its import checkpoint and run lease here; the name is fixed in the code.
var checkpointContainerName = 'threatfox-sentinel'
var authKeySecretName = 'threatfox-auth-key'

// Built-in role and app role ids; the infra tests assert that no other role appears.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var graphAppId = '00000003-0000-0000-c000-000000000000'
var threatIndicatorsReadWriteOwnedByRoleId = '21792b6c-c986-4ffc-85de-df9da54b52fa'

var useSentinel = !empty(sentinelWorkspaceId)

// ARM evaluates a module's scope even when its condition is false, so splitting an empty id
// would fail the whole deployment. A placeholder in this resource group keeps it well formed.
var placeholderWorkspaceId = resourceId('Microsoft.OperationalInsights/workspaces', 'unused')
var sentinelIdParts = split(useSentinel ? sentinelWorkspaceId : placeholderWorkspaceId, '/')

// ---------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
  }
}

// ---------------------------------------------------------------------------------------
// Storage: host state, the deployment package and the import checkpoint
// ---------------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    // Identity-only access: no account keys, no anonymous blobs.
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    accessTier: 'Hot'
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: packageContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource stateContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: checkpointContainerName
  properties: {
    publicAccess: 'None'
  }
}

// ---------------------------------------------------------------------------------------
// Key Vault: the ThreatFox key
// ---------------------------------------------------------------------------------------

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // RBAC lets the grant below target one secret instead of the whole vault.
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // The service rejects false here; leaving the property out means "not enabled".
    enablePurgeProtection: enablePurgeProtection ? true : null
  }
}

resource authKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: authKeySecretName
  properties: {
    value: threatfoxAuthKey
    contentType: 'text/plain'
  }
}

// ---------------------------------------------------------------------------------------
// Function app on the Flex Consumption plan
// ---------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // Flex Consumption is Linux only; reserved marks the plan as Linux.
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${packageContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
  dependsOn: [
    packageContainer
  ]
}

// Publishing with a user name and password is off; deployments authenticate with Entra.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---------------------------------------------------------------------------------------
// Azure role assignments for the function identity
// ---------------------------------------------------------------------------------------

// Owner rather than Contributor: the Functions host takes blob leases for its timers, and
// the package deployment writes to the package container.
resource storageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionApp.id, storageBlobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId(
      'Microsoft.Authorization/roleDefinitions',
      storageBlobDataOwnerRoleId
    )
    principalId: functionApp.identity.principalId
    // Stating the type avoids a failure while the new identity replicates in Entra.
    principalType: 'ServicePrincipal'
  }
}

resource authKeyReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(authKeySecret.id, functionApp.id, keyVaultSecretsUserRoleId)
  scope: authKeySecret
  properties: {
    roleDefinitionId: subscriptionResourceId(
      'Microsoft.Authorization/roleDefinitions',
      keyVaultSecretsUserRoleId
    )
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// The workspace may live in another resource group or subscription, so the grant is made
// by a module deployed there. It also reads the workspace GUID the upload API needs.
module sentinelRole 'modules/sentinel-role.bicep' = if (useSentinel) {
  name: 'sentinel-role-${suffix}'
  scope: resourceGroup(sentinelIdParts[2], sentinelIdParts[4])
  params: {
    workspaceName: sentinelIdParts[8]
    principalId: functionApp.identity.principalId
  }
}

// ---------------------------------------------------------------------------------------
// Microsoft Graph app role for the tiIndicators sink
// ---------------------------------------------------------------------------------------

// Both the lookup and the grant are conditional, so a Sentinel-only deployment needs no
// Graph permissions at all.
resource graphSp 'Microsoft.Graph/servicePrincipals@v1.0' existing = if (grantGraphRole) {
  appId: graphAppId
}

resource graphThreatIndicatorsRole 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (grantGraphRole) {
  principalId: functionApp.identity.principalId
  // Same condition as the lookup, so the lookup is never null here.
  resourceId: graphSp!.id
  appRoleId: threatIndicatorsReadWriteOwnedByRoleId
}

// ---------------------------------------------------------------------------------------
// App settings
// ---------------------------------------------------------------------------------------

var commonSettings = {
  // The host reaches storage with the app identity; no connection string exists.
  AzureWebJobsStorage__accountName: storage.name
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  // Resolved by App Service with the app identity; secretUri follows the latest version.
  THREATFOX_AUTH_KEY: '@Microsoft.KeyVault(SecretUri=${authKeySecret.properties.secretUri})'
  AZURE_TENANT_ID: tenant().tenantId
  IMPORT_SINK: useSentinel ? 'sentinel' : 'graph'
  IMPORT_DAYS: string(importDays)
  INDICATOR_EXPIRATION_DAYS: string(indicatorExpirationDays)
  INDICATOR_ACTION: indicatorAction
  MIN_CONFIDENCE: string(minConfidence)
  IOC_TYPES: iocTypes
  GRAPH_TARGET_PRODUCT: graphTargetProduct
  SENTINEL_SOURCE_SYSTEM: sentinelSourceSystem
  IMPORT_SCHEDULE: importSchedule
  LOG_FORMAT: logFormat
}

// The module output only exists when the module runs, hence the guard and the assertion.
var sentinelSettings = useSentinel ? {
  SENTINEL_WORKSPACE_ID: sentinelRole!.outputs.workspaceCustomerId
} : {}

// Written as a separate resource after the role assignments: App Service resolves the Key
// Vault reference when settings change, so the grant must exist by then. Flex Consumption
// forbids FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION and WEBSITE_RUN_FROM_PACKAGE;
// the runtime comes from functionAppConfig instead.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: union(commonSettings, sentinelSettings)
  dependsOn: [
    storageBlobOwner
    authKeyReader
    sentinelRole
    stateContainer
  ]
}

// ---------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------

@description('Name of the function app, for az functionapp commands.')
output functionAppName string = functionApp.name

@description('Default host name of the function app.')
output functionAppHostName string = functionApp.properties.defaultHostName

@description('Object id of the function app system-assigned identity.')
output principalId string = functionApp.identity.principalId

@description('Name of the storage account that holds host state and the checkpoint.')
output storageAccountName string = storage.name

@description('Name of the Key Vault that holds the ThreatFox key.')
output keyVaultName string = keyVault.name
