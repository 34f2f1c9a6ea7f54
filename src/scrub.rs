//! Takes secrets out of text a vendor wrote. Token endpoints echo what they were sent
//! (`"error_description": "... client_secret=S ..."`), and that text reaches logs,
//! `/-/status`, the status page and 503 bodies. Every form a secret travels in is found:
//! as is, percent- or form-encoded, and inside base64 (HTTP Basic carries
//! `base64(urlencode(id):urlencode(secret))`).

use base64::Engine as _;

const REDACTED: &str = "[redacted]";

/// Shortest run of base64 characters worth decoding: a Basic credential or an encoded
/// secret is longer than this.
const MIN_BASE64_RUN: usize = 8;

/// `text` with every occurrence of each secret replaced by `[redacted]`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    if secrets.is_empty() {
        return text.to_owned();
    }
    let mut forms: Vec<String> = Vec::new();
    for secret in &secrets {
        forms.push((*secret).to_owned());
        forms.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
        forms.push(percent_encode(secret));
        forms.push(percent_encode(secret).to_lowercase());
    }
    // Longest first, so a secret inside another is not left half-replaced.
    forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
    forms.dedup();
    let mut scrubbed = text.to_owned();
    for form in &forms {
        if scrubbed.contains(form.as_str()) {
            scrubbed = scrubbed.replace(form.as_str(), REDACTED);
        }
    }
    scrub_base64(&scrubbed, &forms)
}

/// Every byte but unreserved characters as `%XX` (RFC 3986 2.3).
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Replaces runs of base64 characters that decode to text holding a secret.
fn scrub_base64(text: &str, forms: &[String]) -> String {
    let is_base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_base64) {
        let end = rest[start..]
            .find(|c: char| !is_base64(c))
            .map_or(rest.len(), |length| start + length);
        let run = &rest[start..end];
        out.push_str(&rest[..start]);
        if run.len() >= MIN_BASE64_RUN && decodes_to_a_secret(run, forms) {
            out.push_str(REDACTED);
        } else {
            out.push_str(run);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn decodes_to_a_secret(run: &str, forms: &[String]) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .filter_map(|engine| engine.decode(run).ok())
        .any(|decoded| {
            let decoded = String::from_utf8_lossy(&decoded);
            forms.iter().any(|form| decoded.contains(form.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t+/= x&ü";

    #[test]
    fn every_form_of_a_secret_is_taken_out() {
        let form = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("client:{form}"));
        let text = format!(
            "raw {SECRET} form {form} percent {} basic Basic {basic} done",
            percent_encode(SECRET)
        );
        let scrubbed = scrub(&text, &[SECRET]);
        assert_eq!(
            scrubbed,
            "raw [redacted] form [redacted] percent [redacted] basic Basic [redacted] done"
        );
    }

    #[test]
    fn text_without_a_secret_is_left_as_it_is() {
        let text = "invalid_client: Client authentication failed (dGhlIHF1aWNr)";
        assert_eq!(scrub(text, &[SECRET, ""]), text);
        assert_eq!(scrub(text, &[]), text);
    }
}
