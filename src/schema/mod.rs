//! The config file as written and the words several layers use about it: the serde
//! `Raw*` types, `FieldError` (a field and what is wrong with it), `Target` (an upstream's
//! parsed base URL) and the parsers of durations and header tables. A leaf: `config`
//! validates the whole file with it, and `providers` reads its `[auth]` tables with it,
//! without either importing the other's work.

mod raw;

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

pub use raw::*;

/// A problem with one field, before the file name is known to the code that found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// An upstream's base URL, split once so forwarding only concatenates.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// The base path without its trailing slash: `""` for `https://h/`, `/api` for `https://h/api/`.
    pub base_path: String,
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("{text:?} is not a URL: {error}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{text:?} needs a scheme (https:// or http://)"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("{text:?}: only http and https are supported"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?}: credentials in the URL are not supported; use [auth]"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("{text:?}: a target cannot have a query string"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Target {
            uri,
            scheme,
            authority,
            base_path,
        })
    }

    /// The host as clients name it: lower case, no trailing dot (IPv6 in brackets).
    pub fn host(&self) -> String {
        self.authority
            .host()
            .trim_end_matches('.')
            .to_ascii_lowercase()
    }

    /// The port connections go to: the one written, else the scheme's.
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            })
    }

    /// The URL of a path on this target, for token endpoints that default to one.
    pub fn join(&self, path: &str) -> String {
        format!(
            "{}://{}{}/{}",
            self.scheme,
            self.authority,
            self.base_path,
            path.trim_start_matches('/')
        )
    }
}

pub fn header_pairs(
    field: &str,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, FieldError> {
    headers
        .iter()
        .map(|(name, value)| {
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                FieldError::new(format!("{field}.{name}"), "is not a valid header name")
            })?;
            let header_value = HeaderValue::from_str(value).map_err(|_| {
                FieldError::new(format!("{field}.{name}"), "is not a valid header value")
            })?;
            Ok((header_name, header_value))
        })
        .collect()
}

pub fn duration_or(
    field: &str,
    raw: &Option<RawDuration>,
    default: Duration,
) -> Result<Duration, FieldError> {
    match raw {
        None => Ok(default),
        Some(raw) => parse_duration(raw).map_err(|problem| FieldError::new(field, problem)),
    }
}

pub fn duration_or_none(
    field: &str,
    raw: &Option<RawDuration>,
) -> Result<Option<Duration>, FieldError> {
    raw.as_ref()
        .map(|raw| parse_duration(raw).map_err(|problem| FieldError::new(field, problem)))
        .transpose()
}

/// `"250ms"`, `"90s"`, `"5m"`, `"2h"`, `"1d"`, or a number of seconds.
pub fn parse_duration(raw: &RawDuration) -> Result<Duration, String> {
    let text = match raw {
        RawDuration::Seconds(seconds) => return Ok(Duration::from_secs(*seconds)),
        RawDuration::Text(text) => text.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"30s\", \"5m\" or \"250ms\""))?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m, h or d"
            ))
        }
    };
    Duration::try_from_secs_f64(number * seconds_per_unit)
        .map_err(|_| format!("{text:?} is out of range"))
}
