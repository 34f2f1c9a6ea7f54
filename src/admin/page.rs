//! The status page at `/-/`: one row per upstream, rendered on the server so it reads
//! without JavaScript; `status.js` keeps it live (polling `/-/status`) and drives the
//! buttons. Self-contained: the stylesheet and script are served from the binary, and the
//! markup has no inline script or style, so the page's CSP can stay `default-src 'self'`.
//!
//! The markup is `templates/status.html` (askama, which escapes every value), filled from
//! the typed status. It and the rows `status.js` builds for upstreams added by a reload
//! share one shape: the class names in the template are that contract.

use askama::Template;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::credential::TokenState;
use crate::providers::LoginMethod;
use crate::status::{
    Action, ClientStatus, EgressStatus, PolicyRefusals, Status, TokenStatus, UpstreamStatus,
};
use crate::transport::ProxyBody;

const STYLESHEET: &str = include_str!("page/status.css");
const SCRIPT: &str = include_str!("page/status.js");
/// A key, so the browser asks for no `/favicon.ico` (which would be forwarded nowhere).
const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\">\
    <rect width=\"32\" height=\"32\" rx=\"7\" fill=\"#1f6feb\"/>\
    <circle cx=\"12\" cy=\"16\" r=\"5.5\" fill=\"none\" stroke=\"#fff\" stroke-width=\"3\"/>\
    <path d=\"M17 16h10m-3 0v5\" stroke=\"#fff\" stroke-width=\"3\" fill=\"none\"/></svg>";

/// The table's columns; a login panel row spans them all.
const COLUMNS: [&str; 8] = [
    "Upstream",
    "Route and target",
    "Auth",
    "Token",
    "Last refresh",
    "Last error",
    "Requests",
    "Actions",
];

/// `GET /-/`.
pub fn status_page(status: &Status) -> Response<ProxyBody> {
    respond("text/html; charset=utf-8", render(status))
}

/// `GET /-/assets/NAME`.
pub fn asset(name: &str) -> Option<Response<ProxyBody>> {
    match name {
        "status.css" => Some(respond("text/css; charset=utf-8", STYLESHEET.to_owned())),
        "status.js" => Some(respond("text/javascript; charset=utf-8", SCRIPT.to_owned())),
        "icon.svg" => Some(respond("image/svg+xml", ICON.to_owned())),
        _ => None,
    }
}

fn respond(content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Nothing from elsewhere, no framing (clickjacking the buttons), no sniffing, no
    // referrer leaking the proxy's address, nothing cached.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `templates/status.html`: the page for one status. Every value is escaped by askama.
#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage<'a> {
    ready: bool,
    snapshot: String,
    version: &'a str,
    now: u64,
    columns: [&'static str; 8],
    rows: Vec<Row<'a>>,
    /// `(key, label, count)`.
    refusals: [(&'static str, &'static str, u64); 4],
    /// `file`, `memory` or `redis`.
    store: &'a str,
    /// Egress mode's listener and counts.
    egress: Option<&'a EgressStatus>,
    /// Every client with a key, and its refusals in words.
    clients: Vec<(&'a ClientStatus, String)>,
}

/// One upstream's row, and its login row if it can log in.
struct Row<'a> {
    upstream: &'a UpstreamStatus,
    state: &'static str,
    state_label: &'static str,
    login: &'static str,
    login_label: &'static str,
    /// `(class, text)`: prefix, host, port.
    route: Vec<(&'static str, &'a str)>,
    expires_at: Option<Time>,
    expires: String,
    refreshed_at: Option<Time>,
    refreshed: String,
    tally: String,
    /// Fleet mode: which replica refreshes the shared token.
    fleet: String,
    last_error: &'a str,
    errors: String,
    /// Requests that came through the egress listener, when any did.
    egress: String,
    /// `(action, label)`.
    actions: Vec<(&'static str, &'static str)>,
    login_panel: Option<LoginPanel<'a>>,
}

/// The row under an upstream that can log in: the device code to approve (or, from the
/// script, the browser login in progress). Hidden while no login is pending.
struct LoginPanel<'a> {
    hidden: bool,
    user_code: &'a str,
    uri: &'a str,
    link: &'a str,
    expires_at: Option<Time>,
    expires: String,
}

/// A `<time>`'s attributes for unix second `at`.
struct Time {
    at: u64,
    iso: String,
    human: String,
}

impl Time {
    fn at(at: u64) -> Time {
        let (iso, human) = utc(at);
        Time { at, iso, human }
    }
}

/// The whole page for a `/-/status` document.
fn render(status: &Status) -> String {
    let now = status.now_unix;
    let refusals = &status.browser_guard_refusals;
    StatusPage {
        store: &status.store,
        egress: status.egress.as_ref(),
        clients: status
            .clients
            .iter()
            .map(|client| (client, refused_text(&client.refused)))
            .collect(),
        ready: status.ready,
        snapshot: utc(now).1,
        version: &status.version,
        now,
        columns: COLUMNS,
        rows: status
            .upstreams
            .iter()
            .map(|upstream| row(upstream, now))
            .collect(),
        refusals: [
            ("foreign_host", "foreign Host", refusals.foreign_host),
            ("foreign_origin", "foreign Origin", refusals.foreign_origin),
            ("null_origin", "Origin: null", refusals.null_origin),
            (
                "cross_site_fetch",
                "cross-site fetch",
                refusals.cross_site_fetch,
            ),
        ],
    }
    .render()
    .expect("the status page renders")
}

/// `3 (method 2, path 1)`, or `0`.
fn refused_text(refused: &PolicyRefusals) -> String {
    let by_rule = [
        ("upstream", refused.upstream),
        ("method", refused.method),
        ("path", refused.path),
        ("admin", refused.admin),
    ];
    let total: u64 = by_rule.iter().map(|(_, count)| count).sum();
    let parts: Vec<String> = by_rule
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(rule, count)| format!("{rule} {count}"))
        .collect();
    match parts.is_empty() {
        true => total.to_string(),
        false => format!("{total} ({})", parts.join(", ")),
    }
}

fn row(upstream: &UpstreamStatus, now: u64) -> Row<'_> {
    let token = &upstream.token;
    let state = token.state;
    let route = [
        ("prefix", Some(upstream.prefix.as_str())),
        ("host", upstream.host.as_deref()),
        ("port", upstream.listen.as_deref()),
    ]
    .into_iter()
    .filter_map(|(class, value)| Some((class, value?)))
    .collect();
    let (login, login_label) = match upstream.login {
        LoginMethod::Direct => ("direct", ""),
        LoginMethod::DeviceCode => ("device_code", "device login"),
        LoginMethod::Browser => ("browser", "browser login"),
    };
    let expires = match token.expires_at_unix {
        Some(at) => expiry(at, now),
        None if matches!(
            state,
            TokenState::Valid | TokenState::Expiring | TokenState::Refreshing
        ) =>
        {
            "no expiry".to_owned()
        }
        None => String::new(),
    };
    let refreshed = token
        .last_refresh_unix
        .map_or("never".to_owned(), |at| ago(now.saturating_sub(at)));
    // What the server offers: a static token has nothing to refresh or log out of.
    let actions = [
        (Action::Refresh, "refresh", "Refresh now"),
        (Action::Login, "login", "Log in"),
        (Action::Logout, "logout", "Log out"),
    ]
    .into_iter()
    .filter(|(action, _, _)| upstream.actions.contains(action))
    .map(|(_, action, label)| (action, label))
    .collect();
    Row {
        upstream,
        state: state.label(),
        state_label: state_label(state),
        login,
        login_label,
        route,
        expires_at: token.expires_at_unix.map(Time::at),
        expires,
        refreshed_at: token.last_refresh_unix.map(Time::at),
        refreshed,
        tally: tally(token),
        fleet: fleet_text(upstream),
        last_error: token.last_error.as_deref().unwrap_or(""),
        errors: plural(upstream.requests.errors, "error", "errors"),
        egress: egress_text(upstream.requests.egress),
        actions,
        login_panel: (upstream.login != LoginMethod::Direct).then(|| login_panel(upstream, now)),
    }
}

/// `status.js` writes the same text (`egressText`).
fn egress_text(requests: u64) -> String {
    if requests == 0 {
        String::new()
    } else {
        format!("{requests} via egress")
    }
}

/// `status.js` writes the same text (`fleetText`).
fn fleet_text(upstream: &UpstreamStatus) -> String {
    match &upstream.fleet {
        None => String::new(),
        Some(fleet) if !fleet.redis_reachable => "fleet: Redis unreachable".to_owned(),
        Some(fleet) if fleet.this_replica => "fleet: refreshed here".to_owned(),
        Some(fleet) if fleet.holder.is_empty() => "fleet: no refresher yet".to_owned(),
        Some(fleet) => format!("fleet: refreshed by {}", fleet.holder),
    }
}

fn login_panel(upstream: &UpstreamStatus, now: u64) -> LoginPanel<'_> {
    let pending = upstream.pending_login.as_ref();
    let uri = pending.map_or("", |device| device.verification_uri.as_str());
    let link = pending
        .and_then(|device| device.verification_uri_complete.as_deref())
        .unwrap_or(uri);
    // Only a web address becomes a link (the CSP would stop a `javascript:` one anyway).
    let link = if link.starts_with("https://") || link.starts_with("http://") {
        link
    } else {
        "#"
    };
    let expires_at = pending.map(|device| now + device.expires_in);
    LoginPanel {
        hidden: pending.is_none(),
        user_code: pending.map_or("", |device| device.user_code.as_str()),
        uri,
        link,
        expires_at: expires_at.map(Time::at),
        expires: expires_at.map_or(String::new(), |at| duration(at.saturating_sub(now))),
    }
}

fn state_label(state: TokenState) -> &'static str {
    match state {
        TokenState::BackingOff => "backing off",
        TokenState::NeedsLogin => "needs login",
        TokenState::LoggedOut => "logged out",
        TokenState::InvalidCredentials => "invalid credentials",
        other => other.label(),
    }
}

fn tally(token: &TokenStatus) -> String {
    let mut parts = vec![plural(token.refreshes, "refresh", "refreshes")];
    if token.failures > 0 {
        parts.push(plural(token.failures, "failure", "failures"));
    }
    parts.join(" · ")
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Time left until `at`, as `status.js` writes it too.
fn expiry(at: u64, now: u64) -> String {
    if at <= now {
        return "expired".to_owned();
    }
    format!("expires in {}", duration(at - now))
}

fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        3600..=86399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86400, secs % 86400 / 3600),
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86400),
    }
}

/// Unix seconds as RFC 3339 (`datetime`) and as a reader's UTC time (`title`).
fn utc(unix: u64) -> (String, String) {
    let (days, secs) = (unix / 86400, unix % 86400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    (
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
        format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC"),
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const NOW: u64 = 1_790_000_000;

    fn upstream(name: &str, login: &str, state: &str) -> Value {
        json!({
            "name": name, "prefix": format!("/{name}"), "host": null, "listen": null,
            "target": "http://127.0.0.1:40000/", "kind": "static", "login": login,
            "actions": if login == "direct" { json!(["refresh", "logout"]) } else { json!(["refresh", "login", "logout"]) },
            "token": {"state": state, "expires_in_seconds": null, "expires_at_unix": null,
                      "last_refresh_unix": null, "last_error": null,
                      "refreshes": 0, "failures": 0, "requests_waited": 0},
            "requests": {"total": 0, "errors": 0},
            "pending_login": null,
        })
    }

    fn sample() -> Value {
        let mut direct = upstream("bigeval", "direct", "valid");
        direct["host"] = "bigeval.localhost".into();
        direct["listen"] = "127.0.0.1:9001".into();
        direct["kind"] = "bigeval".into();
        direct["token"]["expires_at_unix"] = (NOW + 123).into();
        direct["token"]["expires_in_seconds"] = 123.into();
        direct["token"]["last_refresh_unix"] = (NOW - 12).into();
        direct["token"]["refreshes"] = 3.into();
        direct["requests"] = json!({"total": 10, "errors": 1, "egress": 2});

        let mut device = upstream("biganimal", "device_code", "needs_login");
        device["kind"] = "biganimal".into();
        device["fleet"] = json!({
            "holder": "pod-<b>-7/1", "generation": 4, "this_replica": false, "version": 9,
            "redis_reachable": true, "when_redis_down": "keep_held_token",
        });
        device["pending_login"] = json!({
            "user_code": "ABCD-EFGH", "verification_uri": "http://127.0.0.1:4000/activate",
            "verification_uri_complete": "http://127.0.0.1:4000/activate?user_code=ABCD-EFGH",
            "expires_in": 590, "interval": 5,
        });

        let mut fixed = upstream("echo", "direct", "pending");
        fixed["actions"] = json!([]);

        let mut hostile = upstream("<script>alert(1)</script>", "browser", "failed");
        hostile["target"] = "http://x/\"><img src=x onerror=alert(2)>".into();
        hostile["token"]["last_error"] =
            "token endpoint said <script>alert(3)</script> & 'more'".into();
        hostile["token"]["failures"] = 1.into();

        json!({
            "version": "0.1.0", "now_unix": NOW, "ready": false,
            "upstreams": [direct, device, hostile, fixed],
            "browser_guard_refusals": {"foreign_host": 2, "foreign_origin": 0, "null_origin": 0, "cross_site_fetch": 1},
            "store": "redis",
        })
    }

    fn typed(status: Value) -> Status {
        serde_json::from_value(status).expect("a status document")
    }

    /// The page cut into each upstream's part: its row and its login row, if any.
    fn parts(html: &str) -> Vec<&str> {
        html.split("<tr data-upstream=").skip(1).collect()
    }

    #[test]
    fn renders_a_row_per_upstream_with_its_values() {
        let html = render(&typed(sample()));
        let parts = parts(&html);
        assert_eq!(parts.len(), 4, "{html}");
        let direct = parts[0];
        assert!(direct.starts_with("\"bigeval\""), "{direct}");
        for expected in [
            "<th scope=row class=name>bigeval</th>",
            "<span class=prefix>/bigeval</span>",
            "<span class=host>bigeval.localhost</span>",
            "<span class=port>127.0.0.1:9001</span>",
            "<span class=target>http://127.0.0.1:40000/</span>",
            "<td class=state data-state=\"valid\"><span class=badge>valid</span>",
            ">expires in 2 min 3 s</time>",
            "datetime=\"2026-09-21T14:15:23Z\"",
            ">12 s ago</time>",
            "datetime=\"2026-09-21T14:13:08Z\"",
            "<span class=tally>3 refreshes</span>",
            "<td class=\"num requests\"><span class=total>10</span>\
             <span class=errors data-count=\"1\">1 error</span><span class=egress>2 via egress</span></td>",
        ] {
            assert!(direct.contains(expected), "{expected} in {direct}");
        }
        assert!(parts[1].contains("data-state=\"needs_login\"><span class=badge>needs login<"));
        // Fleet mode: who refreshes; nothing for an upstream outside a fleet.
        assert!(
            parts[1].contains("<span class=fleet>fleet: refreshed by pod-&#60;b&#62;-7/1</span>"),
            "{}",
            parts[1]
        );
        assert!(direct.contains("<span class=fleet></span>"), "{direct}");
        assert!(parts[3].contains(">pending</span>") && parts[3].contains(">never</time>"));
        assert!(html.contains("<caption>Upstreams <span class=count>(4)</span></caption>"));
        assert!(html.contains("foreign Host <span data-refusal=foreign_host>2</span>"));
        assert!(html.contains("data-ready=false"));
        assert!(html.contains("Tokens kept in: <span id=store>redis</span>"));
        for column in COLUMNS {
            assert!(html.contains(&format!("<th scope=col>{column}</th>")));
        }
    }

    #[test]
    fn egress_figures_show_only_when_egress_is_configured() {
        assert!(!render(&typed(sample())).contains("Egress proxy"));
        let mut status = sample();
        status["egress"] = json!({
            "listen": "127.0.0.1:3128", "intercepted_tunnels": 5, "passthrough_tunnels": 1,
            "refused_not_allowed": 2, "refused_proxy_auth": 0,
        });
        let html = render(&typed(status));
        for expected in [
            "Egress proxy <code>http://127.0.0.1:3128</code>:",
            "<span data-egress=intercepted_tunnels>5</span> vendor tunnels",
            "<span data-egress=refused_not_allowed>2</span> not allowed",
        ] {
            assert!(html.contains(expected), "{expected} in {html}");
        }
    }

    #[test]
    fn every_value_from_the_status_is_escaped() {
        let html = render(&typed(sample()));
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        // askama writes numeric character references.
        assert!(html
            .contains("<th scope=row class=name>&#60;script&#62;alert(1)&#60;/script&#62;</th>"));
        assert!(html.contains("data-upstream=\"&#60;script&#62;alert(1)&#60;/script&#62;\""));
        assert!(html.contains("http://x/&#34;&#62;&#60;img src=x onerror=alert(2)&#62;"));
        assert!(html.contains(
            "token endpoint said &#60;script&#62;alert(3)&#60;/script&#62; &#38; &#39;more&#39;"
        ));
    }

    #[test]
    fn log_in_only_where_a_user_logs_in() {
        let html = render(&typed(sample()));
        let parts = parts(&html);
        let logins: Vec<bool> = parts
            .iter()
            .map(|part| part.contains("data-action=login>Log in"))
            .collect();
        assert_eq!(logins, [false, true, true, false]);
        for part in &parts[..3] {
            assert!(part.contains("<button type=button data-action=refresh>Refresh now"));
            assert!(part.contains("<button type=button data-action=logout>Log out"));
        }
        // A static token: nothing to refresh, log in to or log out of.
        assert!(!parts[3].contains("<button"), "{}", parts[3]);
        assert!(parts[1].contains("<tr class=login-row data-login-for=\"biganimal\">"));
        assert!(parts[2]
            .contains("data-login-for=\"&#60;script&#62;alert(1)&#60;/script&#62;\" hidden>"));
        assert!(!parts[0].contains("login-row") && !parts[3].contains("login-row"));
    }

    #[test]
    fn a_pending_device_login_shows_its_code_and_link() {
        let html = render(&typed(sample()));
        let device = parts(&html)[1];
        assert!(
            device.contains("<p class=user-code>ABCD-EFGH</p>"),
            "{device}"
        );
        assert!(device.contains(
            "<a class=verification href=\"http://127.0.0.1:4000/activate?user_code=ABCD-EFGH\" \
             target=_blank rel=\"noopener noreferrer\">http://127.0.0.1:4000/activate</a>"
        ));
        assert!(device.contains(">9 min 50 s</time>"), "{device}");
    }

    #[test]
    fn the_page_has_no_inline_script_style_or_handler() {
        let html = render(&typed(sample()));
        assert!(!html.contains("<style"));
        for tag in tags(&html) {
            let (name, attributes) = tag;
            for (attribute, _) in &attributes {
                assert!(
                    !attribute.starts_with("on") && attribute != "style",
                    "<{name} {attribute}> in {html}"
                );
            }
            if name == "script" {
                let src = attributes.iter().find(|(a, _)| a == "src");
                assert_eq!(
                    src.map(|(_, v)| v.as_str()),
                    Some("/-/assets/status.js"),
                    "{html}"
                );
            }
            if name == "link" {
                let href = attributes.iter().find(|(a, _)| a == "href").unwrap();
                assert!(href.1.starts_with("/-/assets/"), "{html}");
            }
        }
        // Every <script> is empty: its code comes from `src`.
        assert_eq!(
            html.matches("<script").count(),
            html.matches("></script>").count()
        );
    }

    /// Start tags with their attributes, quoted values honoured (so text inside a value
    /// never reads as an attribute).
    fn tags(html: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut found = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            if rest.starts_with('/') || rest.starts_with('!') {
                continue;
            }
            let name_end = rest.find(|c: char| c.is_whitespace() || c == '>').unwrap();
            let name = rest[..name_end].to_ascii_lowercase();
            rest = &rest[name_end..];
            let mut attributes = Vec::new();
            loop {
                rest = rest.trim_start();
                if let Some(after) = rest.strip_prefix('>') {
                    rest = after;
                    break;
                }
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '>' || c == '=')
                    .unwrap();
                let attribute = rest[..end].to_ascii_lowercase();
                rest = &rest[end..];
                let mut value = String::new();
                if let Some(after) = rest.strip_prefix('=') {
                    if let Some(quoted) = after.strip_prefix('"') {
                        let close = quoted.find('"').unwrap();
                        value = quoted[..close].to_owned();
                        rest = &quoted[close + 1..];
                    } else {
                        let end = after.find(|c: char| c.is_whitespace() || c == '>').unwrap();
                        value = after[..end].to_owned();
                        rest = &after[end..];
                    }
                }
                attributes.push((attribute, value));
            }
            found.push((name, attributes));
        }
        found
    }

    #[test]
    fn a_status_without_upstreams_says_so() {
        let mut status = typed(sample());
        status.upstreams.clear();
        let html = render(&status);
        assert!(html.contains("<p id=empty class=empty>No upstreams are configured.</p>"));
        assert!(!html.contains("<tr data-upstream"));
        assert!(html.contains("<caption>Upstreams <span class=count>(0)</span></caption>"));
    }

    #[test]
    fn times_read_like_status_js_writes_them() {
        assert_eq!(expiry(NOW + 42, NOW), "expires in 42 s");
        assert_eq!(expiry(NOW + 3599, NOW), "expires in 59 min 59 s");
        assert_eq!(expiry(NOW + 7260, NOW), "expires in 2 h 1 min");
        assert_eq!(expiry(NOW + 90000, NOW), "expires in 1 d 1 h");
        assert_eq!(expiry(NOW, NOW), "expired");
        assert_eq!(ago(59), "59 s ago");
        assert_eq!(ago(60), "1 min ago");
        assert_eq!(ago(7200), "2 h ago");
        assert_eq!(utc(0).0, "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400).0, "2000-02-29T00:00:00Z");
        assert_eq!(utc(NOW).1, "2026-09-21 14:13:20 UTC");
    }

    #[test]
    fn assets_are_served_with_their_types() {
        for (name, content_type) in [
            ("status.css", "text/css; charset=utf-8"),
            ("status.js", "text/javascript; charset=utf-8"),
            ("icon.svg", "image/svg+xml"),
        ] {
            let response = asset(name).expect(name);
            assert_eq!(response.headers()[header::CONTENT_TYPE], content_type);
            assert_eq!(
                response.headers()[header::X_CONTENT_TYPE_OPTIONS],
                "nosniff"
            );
        }
        assert!(asset("nope").is_none());
        assert!(asset("../page.rs").is_none());
    }
}
