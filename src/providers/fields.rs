//! Reading an `[auth]` table for one kind: each field a kind reads is marked as used, and
//! whatever is left over is an error naming it, so `username` on a `client_credentials`
//! upstream is not silently ignored.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::schema::{duration_or_none, FieldError, RawAuth, RawDuration, RawScope};
use crate::secret::Secret;

pub struct AuthFields<'a> {
    raw: &'a RawAuth,
    field: &'a str,
    kind: &'a str,
    used: RefCell<Vec<&'static str>>,
}

impl<'a> AuthFields<'a> {
    pub fn new(raw: &'a RawAuth, field: &'a str, kind: &'a str) -> Self {
        AuthFields {
            raw,
            field,
            kind,
            used: RefCell::new(vec!["kind"]),
        }
    }

    pub fn path(&self, name: &str) -> String {
        format!("{}.{name}", self.field)
    }

    pub fn kind(&self) -> &str {
        self.kind
    }

    pub fn error(&self, name: &str, problem: impl Into<String>) -> FieldError {
        FieldError::new(self.path(name), problem)
    }

    fn mark(&self, name: &'static str) {
        self.used.borrow_mut().push(name);
    }

    pub fn text(&self, name: &'static str) -> Option<String> {
        self.mark(name);
        let value = match name {
            "grant" => &self.raw.grant,
            "token_url" => &self.raw.token_url,
            "client_id" => &self.raw.client_id,
            "client_auth" => &self.raw.client_auth,
            "username" => &self.raw.username,
            "audience" => &self.raw.audience,
            "organization" => &self.raw.organization,
            "header" => &self.raw.header,
            "scheme" => &self.raw.scheme,
            "device_authorization_url" => &self.raw.device_authorization_url,
            "authorize_url" => &self.raw.authorize_url,
            "redirect_uri" => &self.raw.redirect_uri,
            "params_in" => &self.raw.params_in,
            "expire_url" => &self.raw.expire_url,
            "revocation_url" => &self.raw.revocation_url,
            "provider_url" => &self.raw.provider_url,
            "exchange_url" => &self.raw.exchange_url,
            "method" => &self.raw.method,
            _ => unreachable!("{name} is not a text field of [auth]"),
        };
        value.clone()
    }

    pub fn required_text(&self, name: &'static str) -> Result<String, FieldError> {
        match self.text(name) {
            Some(value) if !value.is_empty() => Ok(value),
            Some(_) => Err(self.error(name, "must not be empty")),
            None => Err(self.error(name, format!("missing; required by kind {:?}", self.kind))),
        }
    }

    pub fn secret(&self, name: &'static str) -> Option<Secret> {
        self.mark(name);
        let value = match name {
            "client_secret" => &self.raw.client_secret,
            "password" => &self.raw.password,
            "token" => &self.raw.token,
            "refresh_token" => &self.raw.refresh_token,
            "user_token" => &self.raw.user_token,
            _ => unreachable!("{name} is not a secret field of [auth]"),
        };
        value.clone().map(Secret::new)
    }

    pub fn required_secret(&self, name: &'static str) -> Result<Secret, FieldError> {
        match self.secret(name) {
            Some(value) if !value.is_empty() => Ok(value),
            Some(_) => Err(self.error(name, "must not be empty")),
            None => Err(self.error(name, format!("missing; required by kind {:?}", self.kind))),
        }
    }

    pub fn flag(&self, name: &'static str) -> Option<bool> {
        self.mark(name);
        match name {
            "pkce" => self.raw.pkce,
            _ => unreachable!("{name} is not a boolean field of [auth]"),
        }
    }

    /// An http(s) URL field, checked.
    pub fn url(&self, name: &'static str) -> Result<Option<String>, FieldError> {
        match self.text(name) {
            None => Ok(None),
            Some(url) => match url::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
                    Ok(Some(url))
                }
                _ => Err(self.error(name, format!("{url:?} is not an http(s) URL"))),
            },
        }
    }

    pub fn scope(&self) -> Option<Vec<String>> {
        self.mark("scope");
        self.raw.scope.as_ref().map(|scope| match scope {
            RawScope::Joined(text) => text.split_whitespace().map(str::to_owned).collect(),
            RawScope::List(list) => list.clone(),
        })
    }

    pub fn headers(&self) -> Option<&'a BTreeMap<String, String>> {
        self.mark("headers");
        self.raw.headers.as_ref()
    }

    pub fn duration(&self, name: &'static str) -> Result<Option<Duration>, FieldError> {
        self.mark(name);
        let value: &Option<RawDuration> = match name {
            "refresh_skew" => &self.raw.refresh_skew,
            "default_ttl" => &self.raw.default_ttl,
            _ => unreachable!("{name} is not a duration field of [auth]"),
        };
        duration_or_none(&self.path(name), value)
    }

    /// Fails on the first field that is set but that no reader asked for.
    pub fn reject_unused(&self) -> Result<(), FieldError> {
        let used = self.used.borrow();
        let raw = self.raw;
        let present = [
            ("grant", raw.grant.is_some()),
            ("token_url", raw.token_url.is_some()),
            ("client_id", raw.client_id.is_some()),
            ("client_secret", raw.client_secret.is_some()),
            ("client_auth", raw.client_auth.is_some()),
            ("username", raw.username.is_some()),
            ("password", raw.password.is_some()),
            ("token", raw.token.is_some()),
            ("scope", raw.scope.is_some()),
            ("audience", raw.audience.is_some()),
            ("organization", raw.organization.is_some()),
            ("header", raw.header.is_some()),
            ("scheme", raw.scheme.is_some()),
            ("headers", raw.headers.is_some()),
            ("refresh_skew", raw.refresh_skew.is_some()),
            ("default_ttl", raw.default_ttl.is_some()),
            ("refresh_token", raw.refresh_token.is_some()),
            (
                "device_authorization_url",
                raw.device_authorization_url.is_some(),
            ),
            ("authorize_url", raw.authorize_url.is_some()),
            ("redirect_uri", raw.redirect_uri.is_some()),
            ("pkce", raw.pkce.is_some()),
            ("params_in", raw.params_in.is_some()),
            ("expire_url", raw.expire_url.is_some()),
            ("revocation_url", raw.revocation_url.is_some()),
            ("provider_url", raw.provider_url.is_some()),
            ("exchange_url", raw.exchange_url.is_some()),
            ("user_token", raw.user_token.is_some()),
            ("method", raw.method.is_some()),
        ];
        match present
            .iter()
            .find(|(name, set)| *set && !used.contains(name))
        {
            Some((name, _)) => {
                Err(self.error(name, format!("is not used by kind {:?}", self.kind)))
            }
            None => Ok(()),
        }
    }
}
