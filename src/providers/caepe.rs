//! CAEPE: Keycloak. A user account uses the password grant with the public `cape-client`
//! (5-minute tokens plus a refresh token); a service account uses client credentials.
//! Every API call also needs `Organization: <org id>`. The token URL differs between
//! deployments, so it has no default.

use http::{HeaderName, HeaderValue};

use crate::schema::FieldError;

use super::fields::AuthFields;
use super::oauth::{self, ClientAuth, FlowKind, PresetDefaults};
use super::AuthSpec;

pub(super) fn spec(fields: &AuthFields) -> Result<AuthSpec, FieldError> {
    let grant = match fields.text("grant").as_deref() {
        None | Some("password") => FlowKind::Password,
        Some("client_credentials") => FlowKind::ClientCredentials,
        Some(other) => {
            return Err(fields.error(
                "grant",
                format!(
                    "{other:?} is not a CAEPE grant; use \"password\" or \"client_credentials\""
                ),
            ))
        }
    };
    let organization = fields.required_text("organization")?;
    let organization = HeaderValue::from_str(&organization)
        .map_err(|_| fields.error("organization", "is not a valid header value"))?;
    let defaults = PresetDefaults {
        // The public client of the password grant; a service account brings its own id.
        client_id: matches!(grant, FlowKind::Password).then_some("cape-client"),
        client_auth: Some(ClientAuth::Body),
        extra_headers: vec![(HeaderName::from_static("organization"), organization)],
        ..PresetDefaults::default()
    };
    oauth::spec(fields, grant, defaults)
}
