//! `tokenproxy client add|list|remove`: named client keys in the config file. `add` makes
//! a random key, prints it once, and writes only its SHA-256, editing the file in place
//! (toml_edit) so the user's comments and layout stay; the edited text is validated before
//! it replaces the file. A running daemon reloads it (SIGHUP, or within 2 s by itself).

use std::path::{Path, PathBuf};

use crate::clients::{KeyDigest, SERVER_KEY_CLIENT};
use crate::config::{self, Config, ConfigError, ProcessSources, CONFIG_TOML_ENV};

/// Random bytes in a new key (256 bits), written as unpadded base64url: safe in a bearer
/// header and in a proxy URL's user info.
const KEY_BYTES: usize = 32;

/// What `client add` writes.
pub struct NewClient {
    pub name: String,
    pub upstreams: Vec<String>,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    pub admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientEditError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the config is in ${CONFIG_TOML_ENV}, not a file: add the [clients.NAME] table there by hand")]
    NotAFile,
    #[error("{file}: is not TOML: {problem}")]
    Syntax { file: String, problem: String },
    #[error("{file}: `clients` is not a table of [clients.NAME] tables")]
    ClientsNotATable { file: String },
    #[error("{file}: clients.{name} already exists; `tokenproxy client remove {name}` first")]
    Exists { file: String, name: String },
    #[error("{file}: there is no clients.{name}")]
    Missing { file: String, name: String },
    #[error("cannot make a key: the system's random source failed")]
    Random,
    #[error("{file}: cannot write: {source}")]
    Write {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientEditError {
    /// 2 for what the user can fix in the command or the config, 1 for the system.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientEditError::Random | ClientEditError::Write { .. } => 1,
            _ => 2,
        }
    }
}

/// Adds `client` to the config file and returns its key (the only time it is shown).
pub fn add(explicit: Option<&Path>, client: &NewClient) -> Result<String, ClientEditError> {
    let (path, mut document) = open(explicit)?;
    let file = path.display().to_string();
    let key = new_key()?;
    let clients = clients_table(&mut document, &file)?;
    if clients.contains_key(&client.name) {
        return Err(ClientEditError::Exists {
            file,
            name: client.name.clone(),
        });
    }
    let mut entry = toml_edit::Table::new();
    entry
        .decor_mut()
        .set_prefix("\n# Added by `tokenproxy client add`; the key itself is not kept.\n");
    entry["key_sha256"] = toml_edit::value(KeyDigest::of(key.as_bytes()).to_hex());
    entry["upstreams"] = toml_edit::value(strings(&client.upstreams));
    if !client.methods.is_empty() {
        entry["methods"] = toml_edit::value(strings(&client.methods));
    }
    if !client.paths.is_empty() {
        entry["paths"] = toml_edit::value(strings(&client.paths));
    }
    if client.admin {
        entry["admin"] = toml_edit::value(true);
    }
    clients.insert(&client.name, toml_edit::Item::Table(entry));
    replace(&path, &document)?;
    Ok(key)
}

/// Removes `name` from the config file.
pub fn remove(explicit: Option<&Path>, name: &str) -> Result<PathBuf, ClientEditError> {
    let (path, mut document) = open(explicit)?;
    let file = path.display().to_string();
    if clients_table(&mut document, &file)?.remove(name).is_none() {
        return Err(ClientEditError::Missing {
            file,
            name: name.to_owned(),
        });
    }
    replace(&path, &document)?;
    Ok(path)
}

/// One line per client: name, whether it may use the admin endpoints, its policy. Never a
/// key or its hash.
pub fn list(config: &Config) -> String {
    let width = config
        .clients
        .iter()
        .map(|client| client.name.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let mut text = format!("{:width$}  ADMIN  POLICY\n", "NAME");
    for client in config.clients.iter() {
        let admin = if client.admin { "yes" } else { "no" };
        text.push_str(&format!(
            "{:width$}  {admin:5}  {}\n",
            client.name,
            client.policy()
        ));
    }
    if config.clients.is_empty() {
        text.push_str(&format!(
            "(none: no key is asked for; `tokenproxy client add NAME --upstream U` adds one, or set {SERVER_KEY_CLIENT})\n"
        ));
    }
    text
}

/// The config file (never `$TOKENPROXY_CONFIG_TOML`), valid as it stands, and its text
/// as an editable document.
fn open(explicit: Option<&Path>) -> Result<(PathBuf, toml_edit::DocumentMut), ClientEditError> {
    let path = config::locate(explicit)?;
    if path.as_os_str() == format!("${CONFIG_TOML_ENV}").as_str() {
        return Err(ClientEditError::NotAFile);
    }
    // The file a symlink points to is the one edited; the link stays.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    config::load(&path)?;
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Unreadable {
        file: path.display().to_string(),
        source,
    })?;
    let document =
        text.parse::<toml_edit::DocumentMut>()
            .map_err(|error| ClientEditError::Syntax {
                file: path.display().to_string(),
                problem: error.message().to_owned(),
            })?;
    Ok((path, document))
}

/// `[clients]`, made (as a header-less parent of `[clients.NAME]`) when absent.
fn clients_table<'d>(
    document: &'d mut toml_edit::DocumentMut,
    file: &str,
) -> Result<&'d mut toml_edit::Table, ClientEditError> {
    document
        .entry("clients")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            toml_edit::Item::Table(table)
        })
        .as_table_mut()
        .ok_or_else(|| ClientEditError::ClientsNotATable {
            file: file.to_owned(),
        })
}

fn strings(values: &[String]) -> toml_edit::Array {
    values.iter().map(String::as_str).collect()
}

fn new_key() -> Result<String, ClientEditError> {
    use base64::Engine;
    let mut bytes = [0u8; KEY_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ClientEditError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Checks the edited text as `tokenproxy check` would, then swaps it in atomically with
/// the file's permissions: a daemon never reads half a file, or one it would refuse.
fn replace(path: &Path, document: &toml_edit::DocumentMut) -> Result<(), ClientEditError> {
    let file = path.display().to_string();
    let text = document.to_string();
    config::parse(&text, &file, &ProcessSources)?;
    let failed = |source| ClientEditError::Write {
        file: file.clone(),
        source,
    };
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temporary, &text).map_err(failed)?;
    let renamed = std::fs::metadata(path)
        .and_then(|metadata| std::fs::set_permissions(&temporary, metadata.permissions()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = renamed {
        let _ = std::fs::remove_file(&temporary);
        return Err(failed(error));
    }
    Ok(())
}
