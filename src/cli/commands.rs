//! `login`, `logout`, `status`, `token` and `header`: one-shot commands over the admin
//! endpoints of the daemon, or of a local server when none runs.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::daemon::{detail, Admin, Reach};
use super::CommandError;
use crate::config::{Config, UpstreamConfig};
use crate::credential::TokenState;
use crate::providers::TokenSourceSpec;
use crate::status::{
    LoginAnswer, LoginStarted, Logout, LogoutAnswer, Status, TokenAnswer, UpstreamStatus,
};

/// How long `login` waits, past a device code's expiry, for the poller's report.
const LOGIN_REPORT_GRACE: Duration = Duration::from_secs(5);

/// How long `login` waits for a browser login to come back.
const BROWSER_LOGIN_WAIT: Duration = Duration::from_secs(300);

fn upstream<'a>(config: &'a Config, name: &str) -> Result<&'a UpstreamConfig, CommandError> {
    config
        .upstreams
        .iter()
        .find(|upstream| upstream.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
            CommandError::Usage(format!(
                "no upstream named {name:?} in {}; configured: {}",
                config.source,
                names.join(", ")
            ))
        })
}

/// The upstream's config, when the command read one: an unknown name is a usage error
/// before anything is started.
fn configured<'a>(
    reach: &'a Reach,
    name: &str,
) -> Result<Option<&'a UpstreamConfig>, CommandError> {
    match reach {
        Reach::Config(config) => upstream(config, name).map(Some),
        Reach::Url(_) | Reach::NoConfig(_) => Ok(None),
    }
}

/// Runs `command` against tokenproxy as `reach` says, after checking that it has `name`.
async fn with_admin<T>(
    reach: &Reach,
    name: &str,
    configured_listen: bool,
    command: impl AsyncFnOnce(&Admin) -> Result<T, CommandError>,
) -> Result<T, CommandError> {
    configured(reach, name)?;
    let admin = Admin::reach(reach, configured_listen).await?;
    let result = match upstream_status(&admin, name).await {
        Ok(_) => command(&admin).await,
        Err(error) => Err(error),
    };
    admin.close().await;
    result
}

pub async fn login(reach: Reach, name: String, open_browser: bool) -> Result<(), CommandError> {
    // A browser login comes back to the configured address, so a local server binds it.
    with_admin(&reach, &name, true, async |admin| {
        if let (None, Reach::Config(config)) = (admin.daemon(), &reach) {
            if config.fleet.is_some() {
                eprintln!("tokenproxy: note: no daemon answers at {}: logging in from this command; the token goes to the fleet's Redis, where every replica picks it up", config.server.listen);
            } else if config.store_path.is_none() {
                eprintln!("tokenproxy: note: the store is \"memory\" and no daemon runs: this token is gone when the command ends");
            }
        }
        run_login(admin, &name, open_browser).await
    })
    .await
}

async fn run_login(admin: &Admin, name: &str, open_browser: bool) -> Result<(), CommandError> {
    let refreshes_before = upstream_status(admin, name).await?.token.refreshes;
    let answer: LoginAnswer = action(admin, name, "login").await?;
    match answer.started {
        LoginStarted::DeviceCode(device) => {
            let code = &device.user_code;
            let uri = device.verification_uri.as_str();
            let complete = device.verification_uri_complete.as_deref();
            println!("To log in to {name}, open {uri}");
            println!("and enter the code:  {code}");
            if let Some(complete) = complete {
                println!("(or open {complete}, which has the code in it)");
            }
            if open_browser {
                open_in_browser(complete.unwrap_or(uri));
            }
            // The poller reports the code's expiry itself, in words that say so; this
            // deadline only guards against a poller that never reports (a last poll may
            // take the whole token request timeout).
            let expires_in = Duration::from_secs(device.expires_in);
            let within = expires_in + crate::transport::TOKEN_REQUEST_TIMEOUT + LOGIN_REPORT_GRACE;
            wait_for_login(admin, name, refreshes_before, within, "approval").await
        }
        LoginStarted::Browser { authorize_url } => {
            println!("To log in to {name}, open this page and sign in:");
            println!("  {authorize_url}");
            if open_browser {
                open_in_browser(&authorize_url);
            }
            wait_for_login(
                admin,
                name,
                refreshes_before,
                BROWSER_LOGIN_WAIT,
                "the browser",
            )
            .await
        }
        LoginStarted::Direct => {
            println!("{name}: token obtained; no login needed for this kind");
            Ok(())
        }
    }
}

/// Polls the status until a new credential arrives, the login fails, or time runs out;
/// with a live countdown on a terminal.
async fn wait_for_login(
    admin: &Admin,
    name: &str,
    refreshes_before: u64,
    within: Duration,
    waiting_for: &str,
) -> Result<(), CommandError> {
    let failures_before = upstream_status(admin, name).await?.token.failures;
    let deadline = Instant::now() + within;
    let terminal = std::io::stderr().is_terminal();
    loop {
        let token = upstream_status(admin, name).await?.token;
        if token.refreshes > refreshes_before
            && matches!(token.state, TokenState::Valid | TokenState::Expiring)
        {
            if terminal {
                eprint!("\r\x1b[K");
            }
            println!("Logged in to {name}.");
            return Ok(());
        }
        if token.failures > failures_before {
            if terminal {
                eprint!("\r\x1b[K");
            }
            return Err(CommandError::Failed(format!(
                "login to {name} failed: {}",
                token.last_error.as_deref().unwrap_or("unknown error")
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CommandError::Failed(format!(
                "login to {name} timed out waiting for {waiting_for}"
            )));
        }
        if terminal {
            eprint!(
                "\rWaiting for {waiting_for}… {} left ",
                minutes_seconds(left)
            );
            let _ = std::io::stderr().flush();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn logout(reach: Reach, name: String) -> Result<(), CommandError> {
    let answer: LogoutAnswer = with_admin(&reach, &name, false, async |admin| {
        Ok(action(admin, &name, "logout").await?)
    })
    .await?;
    println!("{}", logout_message(name.as_str(), &answer.logout));
    Ok(())
}

/// What logging out did, in the same words as the status page: "revoked" only when the
/// vendor's revocation endpoint accepted it.
fn logout_message(name: &str, logout: &Logout) -> String {
    if logout.revoked {
        return format!(
            "{name}: logged out; the vendor revoked the token and tokenproxy forgot it"
        );
    }
    if !logout.had_token {
        return format!("{name}: logged out; there was no token to forget");
    }
    let until = match logout.still_valid_until_unix {
        Some(at) => format!("stays valid until {}", utc_time(at)),
        None => "stays valid until the vendor expires it".to_owned(),
    };
    let failed = match &logout.revocation_error {
        Some(error) => format!(" (revocation failed: {error})"),
        None => String::new(),
    };
    format!("{name}: logged out; forgotten here; the vendor's token {until}{failed}")
}

/// `2026-11-30 18:04:05 UTC`, from Unix seconds (civil-from-days, proleptic Gregorian).
fn utc_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let seconds = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

pub async fn status(reach: Reach, json: bool) -> Result<(), CommandError> {
    let admin = Admin::reach(&reach, false).await?;
    let answer = admin.get("/-/status").await;
    let daemon = admin.daemon().map(str::to_owned);
    admin.close().await;
    let (status, body) = answer?;
    if !status.is_success() {
        return Err(detail(status, &body).into());
    }
    if json {
        // The daemon's document as it sent it, fields this version does not know included.
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
        return Ok(());
    }
    let status = read_status(body)?;
    match daemon {
        Some(base) => println!("daemon: {base} (tokens: {})", status.store),
        None => println!("daemon: not running (showing the store)"),
    }
    print_table(&status);
    Ok(())
}

fn print_table(status: &Status) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut rows = vec![[
        "UPSTREAM".to_owned(),
        "KIND".to_owned(),
        "STATE".to_owned(),
        "EXPIRES IN".to_owned(),
        "LAST REFRESH".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    for upstream in &status.upstreams {
        let token = &upstream.token;
        rows.push([
            upstream.name.clone(),
            upstream.kind.clone(),
            token.state.label().to_owned(),
            match (token.state, token.expires_in_seconds) {
                (TokenState::Valid, None) => "never".to_owned(),
                (_, Some(seconds)) => human(Duration::from_secs(seconds)),
                _ => "-".to_owned(),
            },
            token
                .last_refresh_unix
                .map(|at| format!("{} ago", human(Duration::from_secs(now.saturating_sub(at)))))
                .unwrap_or_else(|| "-".to_owned()),
            token.last_error.as_deref().unwrap_or("-").to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    // Fleet mode: who refreshes each shared token.
    for upstream in &status.upstreams {
        if let Some(fleet) = &upstream.fleet {
            let holder = match (fleet.holder.as_str(), fleet.this_replica) {
                ("", _) => "nobody yet".to_owned(),
                (holder, true) => format!("{holder} (this replica)"),
                (holder, false) => holder.to_owned(),
            };
            let redis = if fleet.redis_reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            };
            println!(
                "fleet: {} refreshed by {holder}, lease generation {}, entry version {}; redis {redis}",
                upstream.name, fleet.generation, fleet.version
            );
        }
    }
}

pub async fn token(reach: Reach, name: String) -> Result<(), CommandError> {
    println!("{}", token_answer(&reach, &name).await?.token);
    Ok(())
}

/// `tokenproxy upstreams`: the upstream names, one a line, for shell completions and
/// scripts. From the config when there is one (nothing is started), else from the daemon.
pub async fn upstreams(reach: Reach) -> Result<(), CommandError> {
    let names: Vec<String> = match &reach {
        Reach::Config(config) => config.upstreams.iter().map(|u| u.name.clone()).collect(),
        Reach::Url(_) | Reach::NoConfig(_) => {
            let admin = Admin::reach(&reach, false).await?;
            let status = daemon_status(&admin).await;
            admin.close().await;
            status?.upstreams.into_iter().map(|u| u.name).collect()
        }
    };
    for name in names {
        println!("{name}");
    }
    Ok(())
}

/// `tokenproxy header NAME`: every header a forwarded request gets, as `Name: value`
/// lines (`curl -H @FILE` reads them), or with `curl_args` as `-H 'Name: value'`.
pub async fn header(reach: Reach, name: String, curl_args: bool) -> Result<(), CommandError> {
    let headers = token_answer(&reach, &name).await?.headers;
    if curl_args {
        let args: Vec<String> = headers
            .iter()
            .map(|(name, value)| format!("-H {}", shell_quoted(&format!("{name}: {value}"))))
            .collect();
        println!("{}", args.join(" "));
    } else {
        for (name, value) in headers {
            println!("{name}: {value}");
        }
    }
    Ok(())
}

/// `'text'` for a POSIX shell: a `'` inside becomes `'\''`.
fn shell_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A valid token and its headers: a static one straight from the config, any other from
/// tokenproxy's token action (refreshed first if it expires within a minute).
async fn token_answer(reach: &Reach, name: &str) -> Result<TokenAnswer, CommandError> {
    if let Some(upstream) = configured(reach, name)? {
        if let TokenSourceSpec::Static { token } = &upstream.auth.source {
            return static_answer(upstream, token);
        }
    }
    with_admin(reach, name, false, async |admin| {
        Ok(action(admin, name, "token").await?)
    })
    .await
}

fn static_answer(
    upstream: &UpstreamConfig,
    token: &crate::secret::Secret,
) -> Result<TokenAnswer, CommandError> {
    let headers = upstream
        .auth
        .injection
        .headers_for(token)
        .map_err(|error| CommandError::Failed(error.to_string()))?;
    Ok(TokenAnswer {
        upstream: upstream.name.clone(),
        token: token.expose().to_owned(),
        headers: upstream
            .headers
            .iter()
            .chain(&headers)
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        expires_in_seconds: None,
    })
}

/// `GET /-/status`, read.
async fn daemon_status(admin: &Admin) -> Result<Status, CommandError> {
    let (status, body) = admin.get("/-/status").await?;
    if !status.is_success() {
        return Err(detail(status, &body).into());
    }
    Ok(read_status(body)?)
}

async fn upstream_status(admin: &Admin, name: &str) -> Result<UpstreamStatus, CommandError> {
    let status = daemon_status(admin).await?;
    let names: Vec<String> = status.upstreams.iter().map(|u| u.name.clone()).collect();
    status
        .upstreams
        .into_iter()
        .find(|upstream| upstream.name == name)
        .ok_or_else(|| {
            CommandError::Usage(format!(
                "the tokenproxy at {} has no upstream named {name:?}; it has: {}",
                admin.base(),
                names.join(", ")
            ))
        })
}

fn read_status(body: serde_json::Value) -> Result<Status, String> {
    read_answer("/-/status", body)
}

/// `POST /-/upstreams/NAME/ACTION`, its answer read as `T`.
async fn action<T: serde::de::DeserializeOwned>(
    admin: &Admin,
    name: &str,
    action: &str,
) -> Result<T, String> {
    let path = format!("/-/upstreams/{name}/{action}");
    let (status, body) = admin.post(&path).await?;
    if !status.is_success() {
        return Err(detail(status, &body));
    }
    read_answer(&path, body)
}

fn read_answer<T: serde::de::DeserializeOwned>(
    path: &str,
    body: serde_json::Value,
) -> Result<T, String> {
    serde_json::from_value(body).map_err(|error| {
        format!("the running tokenproxy's answer to {path} does not read: {error}")
    })
}

/// Opens `url` with `$BROWSER`, `open` (macOS) or `xdg-open` (a desktop session), if any.
fn open_in_browser(url: &str) {
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.is_empty())
        .or_else(|| {
            if cfg!(target_os = "macos") {
                Some("open".to_owned())
            } else if std::env::var_os("DISPLAY").is_some()
                || std::env::var_os("WAYLAND_DISPLAY").is_some()
            {
                Some("xdg-open".to_owned())
            } else {
                None
            }
        });
    if let Some(opener) = opener {
        let _ = std::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

fn minutes_seconds(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}:{:02}", seconds / 60, seconds % 60)
}

/// `45s`, `4m 59s`, `23h 59m`, `719d`.
fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h {}m", seconds / 3600, (seconds % 3600) / 60),
        _ => format!("{}d", seconds / 86400),
    }
}

/// `tokenproxy health`: 0 when `/-/health` answers 200 (a container HEALTHCHECK, which has
/// no curl). Without `--url`, the configured listen address; with no config, the default.
pub async fn health(
    url: Option<String>,
    config_path: Option<std::path::PathBuf>,
) -> std::process::ExitCode {
    let url = url.unwrap_or_else(|| {
        let listen = crate::config::locate(config_path.as_deref())
            .and_then(|path| crate::config::load(&path))
            .map(|config| config.server.listen)
            .unwrap_or_else(|_| {
                crate::config::DEFAULT_LISTEN
                    .parse()
                    .expect("a valid default")
            });
        format!("{}/-/health", super::daemon::base_of(listen))
    });
    let checked = async {
        let transport = super::daemon::admin_transport()?;
        let response = super::daemon::get(&transport, &url, Duration::from_secs(3)).await?;
        match response.status() {
            http::StatusCode::OK => Ok(()),
            status => Err(format!("answered HTTP {}", status.as_u16())),
        }
    }
    .await;
    match checked {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("tokenproxy: {url} is not healthy: {why}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `tokenproxy curl NAME PATH [args]`: curl straight to the upstream's target with its
/// token headers, like `oauth2l curl`. The token comes as `token` gets it.
pub async fn curl(
    config: Config,
    name: String,
    path: String,
    args: Vec<String>,
) -> Result<(), CommandError> {
    let upstream_config = upstream(&config, &name)?.clone();
    let url = upstream_config.target.join(&path);
    let headers = token_answer(&Reach::Config(Box::new(config)), &name)
        .await?
        .headers;
    let mut command = std::process::Command::new("curl");
    // The headers go to curl as a config file on stdin, so the token is not in the process
    // list.
    let mut config_text = String::new();
    for (name, value) in &headers {
        let value = value.replace('\\', "\\\\").replace('"', "\\\"");
        config_text.push_str(&format!("header = \"{name}: {value}\"\n"));
    }
    command
        .arg("--config")
        .arg("-")
        .arg(&url)
        .args(&args)
        .stdin(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot run curl: {error}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config_text.as_bytes())
            .map_err(|error| format!("curl: {error}"))?;
    }
    let status = child.wait().map_err(|error| format!("curl: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(CommandError::Failed(format!("curl exited with {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human(Duration::from_secs(45)), "45s");
        assert_eq!(human(Duration::from_secs(299)), "4m 59s");
        assert_eq!(human(Duration::from_secs(86399)), "23h 59m");
        assert_eq!(human(Duration::from_secs(62208000)), "720d");
        assert_eq!(minutes_seconds(Duration::from_secs(299)), "4:59");
    }

    #[test]
    fn utc_times_from_unix_seconds() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_868_799), "2000-02-29 23:59:59 UTC");
        assert_eq!(utc_time(1_796_061_845), "2026-11-30 18:04:05 UTC");
    }

    #[test]
    fn logout_says_revoked_only_when_the_vendor_did() {
        let said = |revoked, had_token, still_valid_until_unix, revocation_error: Option<&str>| {
            logout_message(
                "api",
                &Logout {
                    had_token,
                    revoked,
                    still_valid_until_unix,
                    revocation_error: revocation_error.map(str::to_owned),
                },
            )
        };
        assert_eq!(
            said(true, true, None, None),
            "api: logged out; the vendor revoked the token and tokenproxy forgot it"
        );
        assert_eq!(
            said(false, true, Some(1_796_061_845), None),
            "api: logged out; forgotten here; the vendor's token stays valid until 2026-11-30 18:04:05 UTC"
        );
        assert_eq!(
            said(false, true, None, Some("token endpoint answered HTTP 503")),
            "api: logged out; forgotten here; the vendor's token stays valid until the vendor expires it (revocation failed: token endpoint answered HTTP 503)"
        );
        assert_eq!(
            said(false, false, None, None),
            "api: logged out; there was no token to forget"
        );
    }
}
