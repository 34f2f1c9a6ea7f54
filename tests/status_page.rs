//! The status page at `/-/`: served self-contained with its security headers, one row per
//! upstream; and, in a real headless Chromium against `tokenproxy demo --manual-login`, a
//! BigAnimal device login done from the page, which turns the row valid without a reload.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::*;
use tokenproxy_sim::{biganimal, echo};

fn header<'a>(response: &'a http::Response<bytes::Bytes>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn body(response: &http::Response<bytes::Bytes>) -> String {
    String::from_utf8(response.body().to_vec()).unwrap()
}

/// The part of the page from upstream `name`'s row to the next upstream's row.
fn row_of<'a>(html: &'a str, name: &str) -> &'a str {
    let start = html
        .find(&format!("<tr data-upstream=\"{name}\""))
        .unwrap_or_else(|| panic!("no row for {name} in {html}"));
    let rest = &html[start + 1..];
    let end = rest.find("<tr data-upstream=").unwrap_or(rest.len());
    &html[start..start + 1 + end]
}

#[tokio::test]
async fn the_page_is_self_contained_html_with_a_row_per_upstream() {
    let upstream = echo::start().await;
    let sim = biganimal::start(biganimal::BigAnimalSimConfig::default()).await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.api]\ntarget = \"{}/\"\nhost = \"api.localhost\"\n\
         [upstreams.api.auth]\nkind = \"static\"\ntoken = \"page-token\"\n\
         [upstreams.biganimal]\ntarget = \"{}/\"\n\
         [upstreams.biganimal.auth]\nkind = \"biganimal\"\nprovider_url = \"{}\"\n",
        upstream.url(),
        sim.api_url(),
        sim.provider_url()
    ))
    .await;

    let page = get(&proxy.url("/-/")).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let csp = header(&page, "content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    assert_eq!(header(&page, "cache-control"), "no-store");

    let html = body(&page);
    assert!(html.contains("<script src=\"/-/assets/status.js\" defer></script>"));
    assert!(html.contains("<link rel=stylesheet href=\"/-/assets/status.css\">"));
    assert!(
        !html.contains("<style") && !html.contains("style="),
        "{html}"
    );
    assert_eq!(html.matches("<tr data-upstream=").count(), 2, "{html}");
    let api = row_of(&html, "api");
    assert!(api.contains("<th scope=row class=name>api</th>"), "{api}");
    assert!(api.contains("<span class=prefix>/api</span><span class=host>api.localhost</span>"));
    assert!(api.contains(&format!("<span class=target>{}/</span>", upstream.url())));
    assert!(
        !api.contains("<button"),
        "a static token has no login, refresh or logout: {api}"
    );
    let ba = row_of(&html, "biganimal");
    assert!(ba.contains("data-login=\"device_code\""), "{ba}");
    assert!(
        ba.contains("<button type=button data-action=login>Log in"),
        "{ba}"
    );
    assert!(ba.contains("<tr class=login-row data-login-for=\"biganimal\" hidden>"));

    for (name, content_type) in [
        ("status.js", "text/javascript; charset=utf-8"),
        ("status.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let asset = get(&proxy.url(&format!("/-/assets/{name}"))).await;
        assert_eq!(asset.status(), StatusCode::OK, "{name}");
        assert_eq!(header(&asset, "content-type"), content_type, "{name}");
        assert_eq!(header(&asset, "x-content-type-options"), "nosniff");
        if name != "icon.svg" {
            let source = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("src/admin/page")
                    .join(name),
            )
            .unwrap();
            assert_eq!(body(&asset), source, "{name} is served as written");
        }
    }
    let missing = get(&proxy.url("/-/assets/nope")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&missing, "content-type"), "application/problem+json");

    // The buttons' requests: refused without the action header, answered with it.
    let bare = send(
        Request::post(proxy.url("/-/upstreams/api/refresh"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(bare.status(), StatusCode::FORBIDDEN);
    // With it: a static token has nothing to refresh, and says so.
    let refreshed = post_action(&proxy.url("/-/upstreams/api/refresh")).await;
    assert_eq!(refreshed.status(), StatusCode::CONFLICT);

    // A device login in progress is on the page as served, for a reload or no JavaScript.
    let login = post_action(&proxy.url("/-/upstreams/biganimal/login")).await;
    assert_eq!(login.status(), StatusCode::OK);
    let login = json(&login);
    assert_eq!(login["method"], "device_code", "{login}");
    let code = login["user_code"].as_str().unwrap();
    let html = body(&get(&proxy.url("/-/")).await);
    let ba = row_of(&html, "biganimal");
    assert!(
        ba.contains("<tr class=login-row data-login-for=\"biganimal\">"),
        "{ba}"
    );
    assert!(
        ba.contains(&format!("<p class=user-code>{code}</p>")),
        "{ba}"
    );
    assert!(
        ba.contains(&format!(
            "href=\"{}\" target=_blank rel=\"noopener noreferrer\"",
            login["verification_uri_complete"].as_str().unwrap()
        )),
        "{ba}"
    );
    drop(sim);
}

/// The admin answers read as the types in `tokenproxy::status` (as the CLI reads them), and
/// those types write them back field for field.
#[tokio::test]
async fn the_admin_answers_read_as_their_types() {
    use tokenproxy::status::{LoginAnswer, LoginStarted, LogoutAnswer, Status, UpstreamStatus};

    fn read<T: serde::de::DeserializeOwned + serde::Serialize>(value: serde_json::Value) -> T {
        let typed: T = serde_json::from_value(value.clone())
            .unwrap_or_else(|error| panic!("{error} in {value}"));
        assert_eq!(serde_json::to_value(&typed).unwrap(), value);
        typed
    }

    let upstream = echo::start().await;
    let sim = biganimal::start(biganimal::BigAnimalSimConfig::default()).await;
    let tokens = client_credentials_sim("s3cret", Duration::from_secs(3600)).await;
    let proxy = TestProxy::start(&format!(
        "{}{}[upstreams.biganimal]\ntarget = \"{}/\"\n\
         [upstreams.biganimal.auth]\nkind = \"biganimal\"\nprovider_url = \"{}\"\n",
        static_upstream("api", &format!("{}/", upstream.url()), "page-token", ""),
        client_credentials_upstream("svc", &tokens, "s3cret"),
        sim.api_url(),
        sim.provider_url()
    ))
    .await;

    let refreshed: UpstreamStatus = read(json(
        &post_action(&proxy.url("/-/upstreams/svc/refresh")).await,
    ));
    assert_eq!(refreshed.token.state.label(), "valid");
    let login: LoginAnswer = read(json(
        &post_action(&proxy.url("/-/upstreams/biganimal/login")).await,
    ));
    assert!(
        matches!(login.started, LoginStarted::DeviceCode(_)),
        "{login:?}"
    );

    let status: Status = read(json(&get(&proxy.url("/-/status")).await));
    let named = |name: &str| {
        let found = status.upstreams.iter().find(|u| u.name == name);
        found.unwrap_or_else(|| panic!("no {name} in {status:?}"))
    };
    assert!(named("biganimal").pending_login.is_some());
    assert_eq!(named("svc").token.refreshes, 1);
    assert!(named("api").actions.is_empty());

    let logout: LogoutAnswer = read(json(
        &post_action(&proxy.url("/-/upstreams/svc/logout")).await,
    ));
    assert!(logout.logout.had_token, "{logout:?}");
    assert_eq!(logout.upstream.name, "svc");
    drop(sim);
}

/// Kills the child when the test ends, passing or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (15 s at most) for a child's first captured line.
async fn first_line(
    lines: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    child: &mut Child,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(line) = lines.lock().unwrap().first() {
            return line.clone();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tokenproxy demo exited with {status}");
        }
        assert!(Instant::now() < deadline, "tokenproxy demo printed nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR"
    );
    let number = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (number(16), number(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_the_demo_page_logs_in_to_biganimal_without_a_reload() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is needed at {chromium} (bash scripts/test.sh installs Debian's chromium)"
    );
    let dir = temp_dir("status-page");
    let mut child = tokenproxy(&dir)
        .args(["demo", "--manual-login", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = capture(child.stdout.take().unwrap());
    let stderr = capture(child.stderr.take().unwrap());
    let first = first_line(&stdout, &mut child).await;
    let demo = KillOnDrop(child);
    let page_url = first
        .strip_prefix("tokenproxy demo: open the status page: ")
        .unwrap_or_else(|| panic!("the demo's first line: {first}"))
        .to_owned();
    assert!(
        page_url.starts_with("http://127.0.0.1:") && page_url.ends_with("/-/"),
        "{first}"
    );
    let base = page_url.trim_end_matches("/-/").to_owned();

    // The committed screenshot is refreshed on request (`UPDATE_SCREENSHOT=1`), so a test
    // run leaves the work tree clean.
    let screenshot = if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png")
    } else {
        dir.join("status-page.png")
    };
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    let mut node = Command::new("node");
    node.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CHROMIUM", &chromium)
        .arg("tests/interop/status_page.mjs")
        .arg(&page_url)
        .arg(&screenshot);
    let started = Instant::now();
    let node_dir = dir.clone();
    let (status, out, err) =
        tokio::task::spawn_blocking(move || run_bounded(node, &node_dir, Duration::from_secs(120)))
            .await
            .unwrap();
    let took = started.elapsed();
    let demo_log = || stderr.lock().unwrap().join("\n");
    assert!(
        status.is_some_and(|status| status.success()),
        "status_page.mjs: {status:?}\n{err}\n{out}\ndemo:\n{}",
        demo_log()
    );
    let report: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("no JSON report: {out}\n{err}"));
    eprintln!("status page in Chromium took {took:?}: {report}");

    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["rendered_rows"],
        serde_json::json!(["amm", "biganimal", "bigeval", "bigid", "caepe", "echo"]),
        "{report}"
    );
    assert_eq!(report["before"], "needs_login", "{report}");
    assert_eq!(report["before_label"], "needs login", "{report}");
    let refused = report["refresh_error"].as_str().unwrap();
    assert!(
        refused.starts_with("Refreshing biganimal failed: ") && refused.contains("login"),
        "the problem's detail is shown: {refused}"
    );
    let code = report["user_code"].as_str().unwrap();
    assert!(
        report["login_message"].as_str().unwrap().contains(code),
        "{report}"
    );
    let verification = report["verification"].as_str().unwrap();
    assert!(
        verification.starts_with("http://127.0.0.1:")
            && !verification.starts_with(&base)
            && verification.contains("/activate?user_code="),
        "the simulator's page, not the proxy's: {verification}"
    );
    assert_eq!(report["code_prefilled"], true, "{report}");
    assert_eq!(report["focus_kept"], true, "{report}");
    assert_eq!(report["after"], "valid", "{report}");
    assert!(
        report["after_expires"]
            .as_str()
            .unwrap()
            .starts_with("expires in "),
        "{report}"
    );
    assert_eq!(report["logged_in_message"], "Logged in to biganimal.");
    assert_eq!(report["marker"], "still-here", "the page was not reloaded");
    assert_eq!(report["navigations"], 0, "{report}");
    assert!(
        report["refresh_message"]
            .as_str()
            .unwrap()
            .starts_with("Refreshed biganimal: token valid"),
        "{report}"
    );
    assert!(
        report["logout_message"]
            .as_str()
            .unwrap()
            .starts_with("Logged out of amm: "),
        "{report}"
    );

    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    let (width, height) = png_size(&png);
    assert_eq!(width, 1280, "screenshot width");
    assert!(height >= 400, "screenshot height {height}");

    // The proxy agrees with the page, and the login serves requests.
    let status = json(&get(&format!("{base}/-/status")).await);
    let ba = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|upstream| upstream["name"] == "biganimal")
        .unwrap();
    assert_eq!(ba["token"]["state"], "valid", "{ba}");
    assert!(ba["pending_login"].is_null(), "{ba}");
    let clusters = get(&format!("{base}/biganimal/clusters")).await;
    assert_eq!(
        clusters.status(),
        StatusCode::OK,
        "{:?}\n{}",
        clusters.body(),
        demo_log()
    );
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
}
