//! The status page at `/-/`: one row per upstream, rendered on the server so it reads
//! without JavaScript; `status.js` keeps it live (polling `/-/status`) and drives the
//! buttons. Self-contained: the stylesheet and script are served from the binary.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::transport::ProxyBody;

const STYLESHEET: &str = include_str!("page/status.css");
const SCRIPT: &str = include_str!("page/status.js");

/// `GET /-/`.
pub fn status_page(status: &serde_json::Value) -> Response<ProxyBody> {
    respond("text/html; charset=utf-8", render(status))
}

/// `GET /-/assets/NAME`.
pub fn asset(name: &str) -> Option<Response<ProxyBody>> {
    match name {
        "status.css" => Some(respond("text/css; charset=utf-8", STYLESHEET.to_owned())),
        "status.js" => Some(respond("text/javascript; charset=utf-8", SCRIPT.to_owned())),
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

/// The whole page for a `/-/status` document.
fn render(status: &serde_json::Value) -> String {
    let mut rows = String::new();
    for upstream in status["upstreams"].as_array().into_iter().flatten() {
        let name = escape(upstream["name"].as_str().unwrap_or(""));
        let state = escape(upstream["token"]["state"].as_str().unwrap_or(""));
        rows.push_str(&format!(
            "<tr data-upstream=\"{name}\"><th scope=row>{name}</th><td class=state>{state}</td></tr>"
        ));
    }
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\"><title>tokenproxy</title>\
         <link rel=stylesheet href=\"/-/assets/status.css\"></head><body><main><h1>tokenproxy</h1>\
         <table><thead><tr><th scope=col>Upstream</th><th scope=col>Token</th></tr></thead>\
         <tbody>{rows}</tbody></table></main><script src=\"/-/assets/status.js\" defer></script></body></html>"
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
