//! `/-/callback/NAME`: the vendor's redirect back after a browser login, and the small
//! pages it answers with (`templates/callback.html`).

use askama::Template;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::{find, MAX_ADMIN_BODY};
use crate::app::{App, Upstream};
use crate::problem::ProxyError;
use crate::providers::CallbackParams;
use crate::transport::ProxyBody;

#[derive(Template)]
#[template(path = "callback.html")]
struct CallbackPage<'a> {
    title: String,
    name: &'a str,
    outcome: Outcome,
}

enum Outcome {
    LoggedIn,
    Failed(String),
    /// The token is in the URL fragment: the page posts it back.
    Handoff,
}

/// The vendor's redirect back. Authorization codes arrive in the query. Implicit-grant
/// tokens arrive in the fragment, which browsers never send: the page reads it and posts
/// it back here.
pub(super) async fn get(
    app: &App,
    name: &str,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = find(app, name)?;
    let params = CallbackParams::parse(query.unwrap_or(""));
    if params.get("code").is_none()
        && params.get("error").is_none()
        && params.get("access_token").is_none()
    {
        let page = CallbackPage {
            title: format!("Logging in to {name}"),
            name,
            outcome: Outcome::Handoff,
        };
        return Ok(html(StatusCode::OK, &page));
    }
    Ok(finish_login(app, upstream, &params).await)
}

pub(super) async fn post(
    app: &App,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = find(app, name)?;
    let body = Limited::new(request.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|_| ProxyError::BadRequest {
            reason: format!(
                "the callback body must be a URL fragment under {MAX_ADMIN_BODY} bytes"
            ),
        })?
        .to_bytes();
    let params = CallbackParams::parse(&String::from_utf8_lossy(&body));
    Ok(finish_login(app, upstream, &params).await)
}

async fn finish_login(
    app: &App,
    upstream: &Upstream,
    params: &CallbackParams,
) -> Response<ProxyBody> {
    let name = &upstream.config.name;
    match app.logins.callback(&upstream.tokens, params).await {
        Ok(()) => html(
            StatusCode::OK,
            &CallbackPage {
                title: format!("Logged in to {name}"),
                name,
                outcome: Outcome::LoggedIn,
            },
        ),
        Err(error) => html(
            StatusCode::BAD_REQUEST,
            &CallbackPage {
                title: format!("Login to {name} failed"),
                name,
                outcome: Outcome::Failed(error.to_string()),
            },
        ),
    }
}

fn html(status: StatusCode, page: &CallbackPage) -> Response<ProxyBody> {
    let body = page.render().expect("the callback page renders");
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The callback page must not leak the code or token to other sites.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(title: &str, name: &str, outcome: Outcome) -> String {
        CallbackPage {
            title: title.to_owned(),
            name,
            outcome,
        }
        .render()
        .unwrap()
    }

    #[test]
    fn the_pages_escape_what_they_show() {
        let html = render(
            "Login to <x> failed",
            "<x>",
            Outcome::Failed("said <b>no</b> & 'bye'".into()),
        );
        assert!(
            html.contains("<title>Login to &#60;x&#62; failed</title>"),
            "{html}"
        );
        assert!(
            html.contains("<p>said &#60;b&#62;no&#60;/b&#62; &#38; &#39;bye&#39;</p>"),
            "{html}"
        );
        assert!(!html.contains("<script"), "{html}");
        let html = render("Logged in to api", "api", Outcome::LoggedIn);
        assert!(
            html.contains(
                "<p>tokenproxy now holds a token for <b>api</b>. You can close this tab.</p>"
            ),
            "{html}"
        );
        let html = render("Logging in to api", "api", Outcome::Handoff);
        assert!(
            html.contains("fetch('/-/callback/api', {method: 'POST'"),
            "{html}"
        );
        assert!(html.ends_with("</html>"), "{html}");
    }
}
