//! Reading an `[auth]` table for one kind: each field a kind reads is marked as used, and
//! whatever is left over is an error naming it, so `username` on a `client_credentials`
//! upstream is not silently ignored.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::schema::{duration_or_none, AuthValue, FieldError, RawAuth, RawScope};
use crate::secret::Secret;

pub struct AuthFields<'a> {
    raw: &'a RawAuth,
    field: &'a str,
    kind: &'a str,
    used: RefCell<Vec<&'static str>>,
    /// Only finding out which fields the kind reads: a missing required field reads as a
    /// placeholder instead of stopping the reading.
    survey: bool,
}

/// What a missing required field reads as in a survey: valid as text and as a URL.
const SURVEY_PLACEHOLDER: &str = "https://survey.invalid/";

impl<'a> AuthFields<'a> {
    pub fn new(raw: &'a RawAuth, field: &'a str, kind: &'a str) -> Self {
        AuthFields {
            raw,
            field,
            kind,
            used: RefCell::new(vec!["kind"]),
            survey: false,
        }
    }

    /// For `fields_of_kind`: reads like `new`, but missing required fields do not stop it.
    pub fn survey(raw: &'a RawAuth, kind: &'a str) -> Self {
        AuthFields {
            survey: true,
            ..AuthFields::new(raw, "auth", kind)
        }
    }

    /// The fields read so far, in the order they were first read.
    pub fn used(&self) -> Vec<&'static str> {
        let mut used = self.used.borrow().clone();
        let mut seen = std::collections::HashSet::new();
        used.retain(|name| seen.insert(*name));
        used
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
        match self.raw.field(name) {
            Some(AuthValue::Text(value)) => value.clone(),
            _ => unreachable!("{name} is not a text field of [auth]"),
        }
    }

    pub fn required_text(&self, name: &'static str) -> Result<String, FieldError> {
        match self.text(name) {
            Some(value) if !value.is_empty() => Ok(value),
            _ if self.survey => Ok(SURVEY_PLACEHOLDER.to_owned()),
            Some(_) => Err(self.error(name, "must not be empty")),
            None => Err(self.error(name, format!("missing; required by kind {:?}", self.kind))),
        }
    }

    pub fn secret(&self, name: &'static str) -> Option<Secret> {
        self.mark(name);
        match self.raw.field(name) {
            Some(AuthValue::Secret(value)) => value.clone().map(Secret::new),
            _ => unreachable!("{name} is not a secret field of [auth]"),
        }
    }

    pub fn required_secret(&self, name: &'static str) -> Result<Secret, FieldError> {
        match self.secret(name) {
            Some(value) if !value.is_empty() => Ok(value),
            _ if self.survey => Ok(Secret::new(SURVEY_PLACEHOLDER)),
            Some(_) => Err(self.error(name, "must not be empty")),
            None => Err(self.error(name, format!("missing; required by kind {:?}", self.kind))),
        }
    }

    pub fn flag(&self, name: &'static str) -> Option<bool> {
        self.mark(name);
        match self.raw.field(name) {
            Some(AuthValue::Flag(value)) => value,
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
        match self.raw.field(name) {
            Some(AuthValue::Duration(value)) => duration_or_none(&self.path(name), value),
            _ => unreachable!("{name} is not a duration field of [auth]"),
        }
    }

    /// Fails on the first field that is set but that no reader asked for.
    pub fn reject_unused(&self) -> Result<(), FieldError> {
        let used = self.used.borrow();
        match self
            .raw
            .present()
            .into_iter()
            .find(|name| !used.contains(name))
        {
            Some(name) => Err(self.error(name, format!("is not used by kind {:?}", self.kind))),
            None => Ok(()),
        }
    }
}
