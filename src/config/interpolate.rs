//! `${ENV_NAME}` and `${file:/path}` in string values, so secrets can come from the
//! environment or from mounted Docker/Kubernetes secret files instead of the config file.

use toml::Value;

/// Where a value comes from; behind a trait so tests need not touch the process environment.
pub trait Sources {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &str) -> std::io::Result<String>;
}

/// The real environment and file system.
pub struct ProcessSources;

impl Sources for ProcessSources {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// A failed substitution: the dotted field path and what went wrong.
#[derive(Debug)]
pub struct InterpolationError {
    pub field: String,
    pub problem: String,
}

/// Replaces every `${...}` in every string of `value`, in place. `$${` is a literal `${`.
/// Every value substituted is added to `resolved`, so errors can keep them out.
pub fn interpolate_tree(
    value: &mut Value,
    field: &mut Vec<String>,
    sources: &dyn Sources,
    resolved: &mut Vec<String>,
) -> Result<(), InterpolationError> {
    match value {
        Value::String(text) => {
            *text = interpolate_into(text, sources, resolved).map_err(|problem| {
                InterpolationError {
                    field: field.join("."),
                    problem,
                }
            })?;
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                field.push(index.to_string());
                interpolate_tree(item, field, sources, resolved)?;
                field.pop();
            }
        }
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                field.push(key.clone());
                interpolate_tree(item, field, sources, resolved)?;
                field.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Substitutes one string. The error names the variable or file, never a value.
#[cfg(test)]
pub fn interpolate(text: &str, sources: &dyn Sources) -> Result<String, String> {
    interpolate_into(text, sources, &mut Vec::new())
}

fn interpolate_into(
    text: &str,
    sources: &dyn Sources,
    resolved: &mut Vec<String>,
) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(open) = after.strip_prefix("${") {
            let end = open
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
            let value = resolve(&open[..end], sources)?;
            out.push_str(&value);
            resolved.push(value);
            rest = &open[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(reference: &str, sources: &dyn Sources) -> Result<String, String> {
    if let Some(path) = reference.strip_prefix("file:") {
        let content = sources
            .file(path)
            .map_err(|error| format!("cannot read secret file {path}: {error}"))?;
        return Ok(content.trim().to_owned());
    }
    let valid_name = !reference.is_empty()
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!(
            "`${{{reference}}}` is neither an environment variable name nor `file:/path`"
        ));
    }
    sources
        .env(reference)
        .ok_or_else(|| format!("environment variable {reference} is not set"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<&'static str, &'static str>);

    impl Sources for Fake {
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
        fn file(&self, path: &str) -> std::io::Result<String> {
            self.0
                .get(path)
                .map(|v| v.to_string())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }

    fn fake() -> Fake {
        Fake(HashMap::from([
            ("ID", "abc"),
            ("HOST", "example.com"),
            ("/run/secrets/s", "  s3cret\n"),
        ]))
    }

    #[test]
    fn substitutes_env_and_files_anywhere_in_a_string() {
        let f = fake();
        assert_eq!(interpolate("${ID}", &f).unwrap(), "abc");
        assert_eq!(
            interpolate("https://${HOST}/x", &f).unwrap(),
            "https://example.com/x"
        );
        assert_eq!(interpolate("${file:/run/secrets/s}", &f).unwrap(), "s3cret");
        assert_eq!(interpolate("cost $5 $${ID}", &f).unwrap(), "cost $5 ${ID}");
    }

    #[test]
    fn names_what_is_missing() {
        let f = fake();
        let error = interpolate("${NOPE}", &f).unwrap_err();
        assert_eq!(error, "environment variable NOPE is not set");
        assert!(interpolate("${file:/missing}", &f)
            .unwrap_err()
            .contains("/missing"));
        assert!(interpolate("${ID", &f).unwrap_err().contains("unclosed"));
        assert!(interpolate("${A B}", &f).unwrap_err().contains("neither"));
    }

    #[test]
    fn reports_the_field_path() {
        let mut value: Value = toml::from_str("[a.b]\nc = ['x', '${NOPE}']").unwrap();
        let error =
            interpolate_tree(&mut value, &mut Vec::new(), &fake(), &mut Vec::new()).unwrap_err();
        assert_eq!(error.field, "a.b.c.1");
    }
}
