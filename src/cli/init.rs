//! `tokenproxy init`: a commented starter config with one section per vendor.

use std::io::Write;
use std::path::Path;

use super::CommandError;

/// Passes `tokenproxy check` as written: one live example upstream; every vendor section
/// is there, commented out, ready to fill in.
pub const STARTER_CONFIG: &str = r#"# tokenproxy config. Docs: README.md of tokenproxy. Check it with `tokenproxy check`.
# Any string may be "${ENV_NAME}" or "${file:/path}" (a secret file's content).

[server]
listen = "127.0.0.1:8080"          # loopback only; clients use http://127.0.0.1:8080/<upstream>/...
# allowed_origins = ["http://localhost:3000"]   # a local web app allowed to call through

# [store]
# path = "memory"                  # default: ~/.local/state/tokenproxy/tokens.json

# A working example: replace target and token, or delete it once a vendor below is set up.
[upstreams.example]
target = "https://api.example.com/"
[upstreams.example.auth]
kind = "static"
token = "replace-me"

# --- EDB BigAnimal: an access key (recommended) ---
# [upstreams.biganimal]
# target = "https://portal.biganimal.com/api/v3/"
# [upstreams.biganimal.auth]
# kind = "static"
# header = "x-access-key"
# scheme = ""
# token = "${BA_ACCESS_KEY}"
# ... or the device-code login: kind = "biganimal", then `tokenproxy login biganimal`

# --- BigID: a user token exchanged for a systemToken ---
# [upstreams.bigid]
# target = "https://bigid.example.com/"
# [upstreams.bigid.auth]
# kind = "bigid"
# user_token = "${file:/run/secrets/bigid_user_token}"

# --- BiG EVAL: client credentials ---
# [upstreams.bigeval]
# target = "https://mybigevalserver/"
# [upstreams.bigeval.auth]
# kind = "bigeval"
# client_id = "${BIGEVAL_CLIENT_ID}"
# client_secret = "${BIGEVAL_CLIENT_SECRET}"

# --- CAEPE: Keycloak, plus the Organization header ---
# [upstreams.caepe]
# target = "https://api.acme.example/"
# [upstreams.caepe.auth]
# kind = "caepe"
# token_url = "https://keycloak.acme.example/realms/biqmind/protocol/openid-connect/token"
# username = "${CAEPE_USER}"
# password = "${CAEPE_PASSWORD}"
# organization = "acme"

# --- AMM (Sierra Wireless / Semtech AirLink Mobility Manager) ---
# [upstreams.amm]
# target = "https://10.0.0.5/"
# ca_file = "/etc/tokenproxy/amm-ca.pem"
# [upstreams.amm.auth]
# kind = "amm"
# grant = "password"               # or "authorization_code" / "implicit": `tokenproxy login amm`
# client_id = "${AMM_CLIENT_ID}"
# client_secret = "${AMM_CLIENT_SECRET}"
# username = "${AMM_USER}"
# password = "${AMM_PASSWORD}"
"#;

/// Writes the starter config to `path` (mode 0600: it will hold secrets), refusing to
/// overwrite an existing file unless `force`.
/// Writes the starter config to `path`; an existing file is a usage error unless `force`.
pub fn write(path: &Path, force: bool) -> Result<(), CommandError> {
    if path.exists() && !force {
        return Err(CommandError::Usage(format!(
            "{} exists; pass --force to overwrite it",
            path.display()
        )));
    }
    if let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut file| file.write_all(STARTER_CONFIG.as_bytes()))
        .map_err(|error| CommandError::Failed(format!("{}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_starter_config_passes_check() {
        let config = crate::config::parse(
            super::STARTER_CONFIG,
            "starter.toml",
            &crate::config::ProcessSources,
        )
        .unwrap();
        assert_eq!(config.upstreams.len(), 1);
    }
}
