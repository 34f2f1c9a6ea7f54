//! `ca init`, `ca bundle` and `env`: the local CA of egress mode, and the environment
//! that sends a client through it. They need no server and no runtime.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Config};
use crate::egress::ca::{self, CaError, Scope};

/// `[egress] ca_dir`, or its default when there is no `[egress]` table yet.
fn ca_dir(config: &Config) -> Result<PathBuf, ExitCode> {
    match &config.egress {
        Some(egress) => Ok(egress.ca_dir.clone()),
        None => config::default_ca_dir().ok_or_else(|| {
            eprintln!("tokenproxy: neither $XDG_STATE_HOME nor $HOME is set; set [egress] ca_dir");
            ExitCode::from(2)
        }),
    }
}

fn failed(error: CaError) -> ExitCode {
    eprintln!("tokenproxy: {error}");
    ExitCode::FAILURE
}

pub fn init(config: &Config, force: bool) -> ExitCode {
    let dir = match ca_dir(config) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let scope = ca::scope_of(config);
    if let Err(error) = ca::init(&dir, &scope, force) {
        return failed(error);
    }
    println!(
        "created a CA in {}: certificate {}, key {} (mode 0600, keep it private)",
        dir.display(),
        ca::CERT_FILE,
        ca::KEY_FILE
    );
    match &scope {
        Scope::Limited(hosts) => {
            let hosts: Vec<String> = hosts.iter().map(ToString::to_string).collect();
            println!(
                "it can sign only for: {} (X.509 name constraints, critical)",
                hosts.join(", ")
            );
        }
        Scope::Unlimited { unexpressible } => println!(
            "WARNING: it is NOT limited to the vendors' hosts: the target host {unexpressible:?} cannot be a name constraint"
        ),
    }
    let code = write_bundle(&dir, None);
    if code == ExitCode::SUCCESS {
        println!("trust it (README, \"Egress mode\"), then: eval \"$(tokenproxy env)\"");
    }
    code
}

pub fn bundle(config: &Config, out: Option<&Path>) -> ExitCode {
    let dir = match ca_dir(config) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    write_bundle(&dir, out)
}

fn write_bundle(dir: &Path, out: Option<&Path>) -> ExitCode {
    match ca::write_bundle(dir, out) {
        Ok((path, roots)) => {
            println!("wrote {}: {roots} system roots + this CA", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => failed(error),
    }
}

/// `export` lines for a shell: `eval "$(tokenproxy env)"`.
pub fn env(config: &Config) -> ExitCode {
    let Some(egress) = &config.egress else {
        eprintln!(
            "tokenproxy: config error: {}: egress: no [egress] table; add one with listen = \"127.0.0.1:3128\"",
            config.source
        );
        return ExitCode::from(2);
    };
    // With a client key, clients must send it: every one of them takes it from the proxy
    // URL's user info (as Basic), so the URL carries it. This is the user's own key, asked
    // for on purpose, printed for `eval`.
    let user_info = config.server.client_key.as_ref().map_or_else(String::new, |key| {
        eprintln!("tokenproxy: note: the proxy URLs carry server.client_key; keep this output private");
        format!("tokenproxy:{}@", percent_encode_user_info(key.expose()))
    });
    let proxy = format!("http://{user_info}{}", reachable(egress.listen));
    let bundle = egress.ca_dir.join(ca::BUNDLE_FILE);
    let cert = egress.ca_dir.join(ca::CERT_FILE);
    for file in [&cert, &bundle] {
        if !file.is_file() {
            eprintln!(
                "tokenproxy: note: {} does not exist yet; run `tokenproxy ca init`",
                file.display()
            );
        }
    }
    let no_proxy = "localhost,127.0.0.1,::1".to_owned();
    let bundle = bundle.display().to_string();
    let lines = [
        ("HTTPS_PROXY", &proxy),
        ("HTTP_PROXY", &proxy),
        // curl reads only the lower-case http_proxy; most tools read either.
        ("https_proxy", &proxy),
        ("http_proxy", &proxy),
        ("NO_PROXY", &no_proxy),
        ("no_proxy", &no_proxy),
        ("SSL_CERT_FILE", &bundle),
        ("REQUESTS_CA_BUNDLE", &bundle),
        ("CURL_CA_BUNDLE", &bundle),
        ("NODE_EXTRA_CA_CERTS", &cert.display().to_string()),
    ];
    for (name, value) in lines {
        println!("export {name}={}", shell_word(value));
    }
    ExitCode::SUCCESS
}

/// The address a local client dials: a wildcard listen address is reached on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// `text` with everything but RFC 3986 unreserved characters percent-encoded, so a key
/// holding `@`, `:` or `/` stays one password in a URL.
fn percent_encode_user_info(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `value` as one shell word: bare when it is safe, else single-quoted.
fn shell_word(value: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-:,@+=%".contains(c);
    if !value.is_empty() && value.chars().all(safe) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_the_shell_needs_it() {
        assert_eq!(shell_word("http://127.0.0.1:3128"), "http://127.0.0.1:3128");
        assert_eq!(shell_word("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn a_key_stays_one_password_in_the_proxy_url() {
        assert_eq!(percent_encode_user_info("abc-DEF_1.~"), "abc-DEF_1.~");
        assert_eq!(percent_encode_user_info("a@b:c/d%"), "a%40b%3Ac%2Fd%25");
    }

    #[test]
    fn a_wildcard_listen_is_dialled_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:3128".parse().unwrap()).to_string(),
            "127.0.0.1:3128"
        );
        assert_eq!(
            reachable("[::]:3128".parse().unwrap()).to_string(),
            "[::1]:3128"
        );
    }
}
