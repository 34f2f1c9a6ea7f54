//! Proves the interop harness (tests/interop/server.mjs + tests/support/oidc.rs)
//! with plain HTTP, without tokenproxy.

mod support;

use support::oidc;

use oidc::{form_urlencode, post_form, query_param, OidcProvider};
use serde_json::Value;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("missing {name} in {v}"))
}

#[tokio::test]
async fn client_credentials_post_and_basic() {
    let op = OidcProvider::start().await;
    assert!(
        op.issuer().starts_with("http://127.0.0.1:"),
        "{}",
        op.issuer()
    );
    assert_eq!(op.token_url(), format!("{}/token", op.issuer()));

    let (status, body) = post_form(
        op.token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "cc-client"),
            ("client_secret", "cc-secret"),
            ("scope", "api:read"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    str_field(&body, "access_token");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "api:read");
    assert_eq!(body["expires_in"], 60);

    let (status, body) = post_form(
        op.token_url(),
        &[("grant_type", "client_credentials"), ("scope", "api:read")],
        Some(("cc-basic", "cc-basic-secret")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    str_field(&body, "access_token");
    assert_eq!(body["token_type"], "Bearer");

    // The server really authenticates clients.
    let (status, body) = post_form(
        op.token_url(),
        &[("grant_type", "client_credentials")],
        Some(("cc-basic", "wrong")),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    // ...and enforces the registered authentication method.
    let (status, body) = post_form(
        op.token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "cc-basic"),
            ("client_secret", "cc-basic-secret"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");

    let stats = op.stats().await;
    assert_eq!(stats["token_requests"]["client_credentials"], 4, "{stats}");
    assert_eq!(stats["token_errors"]["invalid_client"], 2, "{stats}");
    assert_eq!(stats["invalid_grant"], 0, "{stats}");
}

#[tokio::test]
async fn ttl_env_is_honoured() {
    let op = OidcProvider::start_with(&[("ACCESS_TTL", "7"), ("DEVICE_TTL", "42")]).await;
    let (status, body) = post_form(
        op.token_url(),
        &[("grant_type", "client_credentials")],
        Some(("cc-basic", "cc-basic-secret")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 7, "{body}");

    let (status, body) = post_form(
        op.device_authorization_url(),
        &[("client_id", "device-client"), ("scope", "api:read")],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 42, "{body}");
}

#[tokio::test]
async fn device_flow_with_refresh_rotation() {
    let op = OidcProvider::start().await;

    let (status, dev) = post_form(
        op.device_authorization_url(),
        &[
            ("client_id", "device-client"),
            ("scope", "openid offline_access api:read"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{dev}");
    let device_code = str_field(&dev, "device_code").to_string();
    let user_code = str_field(&dev, "user_code").to_string();
    str_field(&dev, "verification_uri");

    let poll = [
        ("grant_type", DEVICE_GRANT),
        ("client_id", "device-client"),
        ("device_code", device_code.as_str()),
    ];
    let (status, body) = post_form(op.token_url(), &poll, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "authorization_pending");

    op.approve_device(&user_code).await;

    let (status, tokens) = post_form(op.token_url(), &poll, None).await;
    assert_eq!(status, 200, "{tokens}");
    str_field(&tokens, "access_token");
    str_field(&tokens, "id_token");
    assert_eq!(tokens["scope"], "openid offline_access api:read");
    let rt1 = str_field(&tokens, "refresh_token").to_string();

    let (status, refreshed) = refresh(&op, "device-client", &rt1).await;
    assert_eq!(status, 200, "{refreshed}");
    str_field(&refreshed, "access_token");
    let rt2 = str_field(&refreshed, "refresh_token").to_string();
    assert_ne!(rt1, rt2, "refresh token must rotate");

    // Reusing the rotated token fails ...
    let (status, body) = refresh(&op, "device-client", &rt1).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    // ... and (reuse detection) revokes the whole grant, including rt2.
    let (status, body) = refresh(&op, "device-client", &rt2).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    // A device code is single use.
    let (status, body) = post_form(op.token_url(), &poll, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    let stats = op.stats().await;
    assert_eq!(stats["token_requests"][DEVICE_GRANT], 3, "{stats}");
    assert_eq!(stats["token_requests"]["refresh_token"], 3, "{stats}");
    assert_eq!(stats["token_errors"]["authorization_pending"], 1, "{stats}");
    assert_eq!(stats["invalid_grant"], 3, "{stats}");
}

async fn refresh(op: &OidcProvider, client_id: &str, rt: &str) -> (u16, Value) {
    post_form(
        op.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", rt),
        ],
        None,
    )
    .await
}

#[tokio::test]
#[should_panic(expected = "approving device user_code")]
async fn approving_unknown_user_code_panics() {
    let op = OidcProvider::start().await;
    op.approve_device("BCDF-GHJK").await;
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn new_pkce() -> Pkce {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = Vec::new();
    for _ in 0..4 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        bytes.extend_from_slice(&h.finish().to_le_bytes());
    }
    let verifier = base64url(&bytes);
    let challenge = base64url(&sha256(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

fn authorize_url(op: &OidcProvider, redirect_uri: &str, pkce: &Pkce, state: &str) -> String {
    format!(
        "{}?{}",
        op.authorization_url(),
        form_urlencode(&[
            ("response_type", "code"),
            ("client_id", "code-client"),
            ("redirect_uri", redirect_uri),
            ("scope", "openid offline_access api:read"),
            ("state", state),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
        ])
    )
}

async fn exchange(
    op: &OidcProvider,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> (u16, Value) {
    post_form(
        op.token_url(),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "code-client"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn authorization_code_with_pkce_any_loopback_port() {
    let op = OidcProvider::start().await;

    // Two different loopback ports, both accepted for the port-less registration.
    for (port, state) in [(54321, "state-one"), (40007, "st@te two/+")] {
        let redirect_uri = format!("http://127.0.0.1:{port}/-/callback/interop");
        let pkce = new_pkce();
        let callback = op
            .browse_to_redirect(&authorize_url(&op, &redirect_uri, &pkce, state))
            .await;
        assert!(
            callback.starts_with(&format!("{redirect_uri}?")),
            "{callback}"
        );
        assert_eq!(
            query_param(&callback, "state").as_deref(),
            Some(state),
            "{callback}"
        );
        assert_eq!(
            query_param(&callback, "iss").as_deref(),
            Some(op.issuer()),
            "{callback}"
        );
        let code =
            query_param(&callback, "code").unwrap_or_else(|| panic!("no code in {callback}"));

        // Wrong verifier is rejected (PKCE is really checked).
        let (status, body) = exchange(&op, &code, &redirect_uri, &new_pkce().verifier).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_grant");
    }

    let redirect_uri = "http://127.0.0.1:61000/-/callback/interop";
    let pkce = new_pkce();
    let callback = op
        .browse_to_redirect(&authorize_url(&op, redirect_uri, &pkce, "s3"))
        .await;
    let code = query_param(&callback, "code").expect("code");
    let (status, tokens) = exchange(&op, &code, redirect_uri, &pkce.verifier).await;
    assert_eq!(status, 200, "{tokens}");
    str_field(&tokens, "access_token");
    str_field(&tokens, "id_token");
    let rt = str_field(&tokens, "refresh_token").to_string();

    let (status, refreshed) = refresh(&op, "code-client", &rt).await;
    assert_eq!(status, 200, "{refreshed}");
    let rt2 = str_field(&refreshed, "refresh_token").to_string();
    assert_ne!(rt2, rt);

    // Codes are single use; replaying one revokes the grant, so the
    // refresh token issued from it stops working as well.
    let (status, body) = exchange(&op, &code, redirect_uri, &pkce.verifier).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let (status, body) = refresh(&op, "code-client", &rt2).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    let stats = op.stats().await;
    assert_eq!(stats["token_requests"]["authorization_code"], 4, "{stats}");
    assert_eq!(stats["token_requests"]["refresh_token"], 2, "{stats}");
    assert_eq!(stats["invalid_grant"], 4, "{stats}");
}

#[tokio::test]
async fn unregistered_redirect_uri_is_not_followed() {
    let op = OidcProvider::start().await;
    let pkce = new_pkce();
    // Different path: oidc-provider answers with an error instead of redirecting.
    let url = authorize_url(&op, "http://127.0.0.1:5000/-/callback/other", &pkce, "x");
    let result = tokio::spawn(async move { op.browse_to_redirect(&url).await }).await;
    let panic = result.expect_err("must not reach a callback");
    let msg = panic
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(msg.contains("redirect_uri"), "{msg}");
}

#[tokio::test]
async fn server_stops_when_dropped() {
    let op = OidcProvider::start().await;
    let addr = op.issuer().trim_start_matches("http://").to_string();
    tokio::net::TcpStream::connect(&addr)
        .await
        .expect("server up");
    drop(op);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "server still listening after drop"
    );
}

#[test]
fn sha256_matches_rfc7636_vector() {
    let challenge = base64url(&sha256(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
    assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    assert_eq!(
        base64url(&sha256(b"")),
        "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    );
}

fn base64url(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}
