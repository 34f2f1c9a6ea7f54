//! Config parsing on arbitrary text: `tokenproxy::config::parse` must never panic, and a
//! refused config must be one line that starts with the file name and never shows a value
//! that came from the environment or a secret file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenproxy::config::{parse, Sources};

const FILE: &str = "fuzz.toml";

/// Fixed stand-ins for the environment and secret files; never the real ones.
/// Variables whose name starts with `UNSET` are not set; files outside `/run/secrets/` do
/// not exist, so both the found and the missing paths are explored.
struct FakeSources {
    env_value: &'static str,
    file_value: &'static str,
}

impl Sources for FakeSources {
    fn env(&self, name: &str) -> Option<String> {
        if name.starts_with("UNSET") {
            None
        } else {
            Some(self.env_value.to_owned())
        }
    }

    fn file(&self, path: &str) -> std::io::Result<String> {
        if path.starts_with("/run/secrets/") {
            Ok(format!("  {}\n", self.file_value))
        } else {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }
}

const SOURCES: FakeSources = FakeSources {
    env_value: "FUZZ-SECRET-VALUE",
    file_value: "FUZZ-FILE-SECRET",
};

/// Same shape, other values: tells a value that came from a source from one the input
/// spelled out itself (literally or through TOML escapes).
const OTHER_SOURCES: FakeSources = FakeSources {
    env_value: "FUZZ-SECRET-OTHER",
    file_value: "FUZZ-FILE-OTHERS",
};

fn error_of(text: &str, sources: &FakeSources) -> Option<String> {
    parse(text, FILE, sources).err().map(|error| error.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(message) = error_of(text, &SOURCES) else {
        return;
    };
    assert!(
        !message.contains('\n'),
        "config error is not one line: {message:?}"
    );
    assert!(
        message.starts_with(FILE),
        "config error does not start with the file name: {message:?}"
    );
    for secret in [SOURCES.env_value, SOURCES.file_value] {
        if message.contains(secret) {
            // Only a leak if it is there because of the source, not because the input
            // wrote it out: with other source values it must disappear.
            let other = error_of(text, &OTHER_SOURCES).unwrap_or_default();
            assert!(
                other.contains(secret),
                "config error shows a secret value from the environment or a file: {message:?}"
            );
        }
    }
});
