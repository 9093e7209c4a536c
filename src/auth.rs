//! Access tokens for the sinks, from the function's managed identity or, on a developer's
//! machine, from the Azure CLI login.
//!
//! The credential is picked explicitly rather than by probing: a process without
//! `IDENTITY_ENDPOINT` never asks the instance metadata service, which on a laptop or a CI
//! runner would hang for over a minute before failing.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId,
};

use crate::config::Settings;
use crate::secret::Secret;

/// Why no token could be obtained.
#[derive(Debug, thiserror::Error)]
#[error("could not get an access token for {scope} from {source_name}: {reason}")]
pub struct AuthError {
    /// The scope that was asked for.
    pub scope: String,
    /// Which credential was used, in words a user recognises.
    pub source_name: &'static str,
    /// The cause, with a hint at the fix.
    pub reason: String,
}

/// A credential together with a description of where its tokens come from.
#[derive(Debug, Clone)]
pub struct TokenSource {
    credential: Arc<dyn TokenCredential>,
    source_name: &'static str,
}

impl TokenSource {
    /// Picks the credential for this environment: the managed identity when the Functions
    /// platform exposes one, otherwise the developer's Azure CLI (or azd) login.
    pub fn from_settings(settings: &Settings) -> Result<Self, AuthError> {
        let failed = |source_name, err: azure_core::Error| AuthError {
            scope: String::new(),
            source_name,
            reason: crate::error_chain(&err),
        };
        if settings.has_managed_identity {
            let user_assigned_id = settings
                .azure_client_id
                .clone()
                .map(UserAssignedId::ClientId);
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id,
                ..Default::default()
            };
            let credential = ManagedIdentityCredential::new(Some(options))
                .map_err(|err| failed("the managed identity", err))?;
            Ok(Self {
                credential,
                source_name: "the managed identity",
            })
        } else {
            let credential = DeveloperToolsCredential::new(None)
                .map_err(|err| failed("the Azure CLI login", err))?;
            Ok(Self {
                credential,
                source_name: "the Azure CLI login",
            })
        }
    }

    /// Wraps any credential; used by tests and by callers with their own credential.
    pub fn new(credential: Arc<dyn TokenCredential>, source_name: &'static str) -> Self {
        Self {
            credential,
            source_name,
        }
    }

    /// The credential itself, for clients that ask for their own tokens (blob storage).
    pub fn credential(&self) -> Arc<dyn TokenCredential> {
        Arc::clone(&self.credential)
    }

    /// Gets a bearer token for `scope` (such as `https://graph.microsoft.com/.default`).
    ///
    /// The credential caches tokens and renews them before they expire.
    pub async fn token(&self, scope: &str) -> Result<Secret, AuthError> {
        let token = self
            .credential
            .get_token(&[scope], None)
            .await
            .map_err(|err| {
                let hint = if self.source_name == "the Azure CLI login" {
                    " (run `az login`, or use --dry-run to import without Azure)"
                } else {
                    " (check that the function app has a system-assigned identity)"
                };
                AuthError {
                    scope: scope.to_owned(),
                    source_name: self.source_name,
                    reason: format!("{}{hint}", crate::error_chain(&err)),
                }
            })?;
        Ok(Secret::new(token.token.secret()))
    }
}

/// Reads the tenant id (`tid` claim) from a JWT access token without verifying it; the token
/// came from Entra ID over TLS, and the claim only fills in `azureTenantId`.
pub fn tenant_of_token(token: &Secret) -> Option<String> {
    let payload = token.expose().split('.').nth(1)?;
    let bytes = azure_core::base64::decode_url_safe(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("tid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_is_read_from_the_tid_claim() {
        let claims = azure_core::base64::encode_url_safe(
            r#"{"aud":"x","tid":"72f988bf-86f1-41af-91ab-2d7cd011db47"}"#,
        );
        let token = Secret::new(format!("e30.{claims}.c2ln"));

        assert_eq!(
            tenant_of_token(&token).as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(tenant_of_token(&Secret::new("opaque-token")), None);
    }
}
