//! Logins through the user's browser: the authorization-code grant (with PKCE S256, RFC
//! 7636) and the implicit grant. The vendor redirects back to tokenproxy's own callback
//! (`/-/callback/NAME`), where `state` must match the login that was started.

use tokio::time::Instant;

use crate::secret::Secret;

use super::oauth::{EndpointSpec, TokenEndpoint, TokenSet};
use super::ProviderError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseType {
    /// `?code=` back to the callback, exchanged at the token endpoint.
    Code,
    /// `#access_token=` in the fragment: only the browser sees it, so the callback page
    /// hands it over.
    Token,
}

/// A login waiting for its callback.
pub struct BrowserLogin {
    pub authorize_url: String,
    pub state: String,
    pub redirect_uri: String,
    pub response_type: ResponseType,
    pub verifier: Option<Secret>,
    pub started: Instant,
}

/// The parameters the vendor sent to the callback (query, or the fragment for implicit).
pub struct CallbackParams(pub Vec<(String, String)>);

impl CallbackParams {
    pub fn parse(text: &str) -> CallbackParams {
        CallbackParams(
            url::form_urlencoded::parse(text.trim_start_matches(['?', '#']).as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

pub fn start(
    authorize_url: &str,
    endpoint: &EndpointSpec,
    redirect_uri: &str,
    response_type: ResponseType,
    pkce: bool,
) -> Result<BrowserLogin, ProviderError> {
    let mut url = url::Url::parse(authorize_url)
        .map_err(|_| ProviderError::Malformed("authorize_url is not a URL".into()))?;
    let state = oauth2::CsrfToken::new_random().secret().clone();
    let (challenge, verifier) = if pkce {
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        (
            Some(challenge),
            Some(Secret::new(verifier.secret().clone())),
        )
    } else {
        (None, None)
    };
    {
        let mut query = url.query_pairs_mut();
        query.append_pair(
            "response_type",
            match response_type {
                ResponseType::Code => "code",
                ResponseType::Token => "token",
            },
        );
        query.append_pair("client_id", &endpoint.client_id);
        query.append_pair("redirect_uri", redirect_uri);
        if !endpoint.scope.is_empty() {
            query.append_pair("scope", &endpoint.scope.join(" "));
        }
        if let Some(audience) = &endpoint.audience {
            query.append_pair("audience", audience);
        }
        query.append_pair("state", &state);
        if let Some(challenge) = &challenge {
            query.append_pair("code_challenge", challenge.as_str());
            query.append_pair("code_challenge_method", challenge.method().as_str());
        }
    }
    Ok(BrowserLogin {
        authorize_url: url.into(),
        state,
        redirect_uri: redirect_uri.to_owned(),
        response_type,
        verifier,
        started: Instant::now(),
    })
}

/// Checks the callback against the login and turns it into tokens.
pub async fn finish(
    endpoint: &TokenEndpoint,
    login: &BrowserLogin,
    callback: &CallbackParams,
) -> Result<TokenSet, ProviderError> {
    if callback.get("state") != Some(login.state.as_str()) {
        return Err(ProviderError::Rejected(
            "the callback's state does not match the login that was started".into(),
        ));
    }
    if let Some(error) = callback.get("error") {
        return Err(ProviderError::OAuth {
            error: error.to_owned(),
            description: callback.get("error_description").map(str::to_owned),
        });
    }
    match login.response_type {
        ResponseType::Code => {
            let code = callback
                .get("code")
                .ok_or_else(|| ProviderError::Rejected("the callback has no code".into()))?;
            endpoint
                .authorization_code(code, &login.redirect_uri, login.verifier.as_ref())
                .await
        }
        ResponseType::Token => {
            let access_token = callback
                .get("access_token")
                .filter(|token| !token.is_empty())
                .ok_or_else(|| {
                    ProviderError::Rejected("the callback has no access_token".into())
                })?;
            Ok(TokenSet {
                access_token: Secret::new(access_token),
                refresh_token: None,
                lifetime: callback
                    .get("expires_in")
                    .and_then(|seconds| seconds.parse().ok())
                    .map(std::time::Duration::from_secs),
                refresh_lifetime: None,
                // The redirect happened moments ago; counting from the login's start errs early.
                sent_at: login.started,
            })
        }
    }
}
