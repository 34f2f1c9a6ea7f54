//! The admin endpoints' JSON as types: the `/-/status` document, the answers to the
//! login and logout actions. The admin side builds these values, and the status page and
//! the CLI read them, so the field names live here once. `status.js` and the Postman
//! collection read the same JSON.
//!
//! A missing optional field reads as `None`, and an unknown field is ignored, so a CLI
//! reads a daemon one version apart.

use serde::{Deserialize, Serialize};

use crate::credential::TokenState;
use crate::providers::LoginMethod;

/// `GET /-/status`: per upstream, route, target, kind, token state and timings. Never a
/// token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub now_unix: u64,
    /// Every upstream has a valid token (`/-/ready` answers 200).
    pub ready: bool,
    pub upstreams: Vec<UpstreamStatus>,
    pub browser_guard_refusals: Refusals,
    /// Where tokens are kept: `file`, `memory`, or `redis` (fleet mode).
    #[serde(default)]
    pub store: String,
    /// Egress mode (`[egress]`): the proxy address for `HTTPS_PROXY` and what it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressStatus>,
    /// Every client with a key (`server.client_key`, `[clients.NAME]`); empty when no key
    /// is asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientStatus>,
}

/// One client: its policy and figures. Never its key or the key's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub name: String,
    /// The policy in words: `bigid GET, HEAD; bigeval any method on /api/**`.
    pub policy: String,
    /// The upstreams it may use; `None` for every one.
    pub upstreams: Option<Vec<String>>,
    /// May use the `/-/` endpoints beyond health and readiness.
    pub admin: bool,
    /// Requests that presented its key.
    pub requests: u64,
    pub refused: PolicyRefusals,
}

/// A client's requests its policy refused, by the rule that refused them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRefusals {
    pub upstream: u64,
    pub method: u64,
    pub path: u64,
    pub admin: u64,
}

/// The egress listener's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressStatus {
    /// `IP:PORT`, once bound.
    pub listen: Option<String>,
    /// CONNECT tunnels to a vendor, TLS terminated here.
    pub intercepted_tunnels: u64,
    /// CONNECT tunnels opened blindly under `egress.passthrough`.
    pub passthrough_tunnels: u64,
    /// 403: neither a vendor nor a passthrough host.
    pub refused_not_allowed: u64,
    /// 407: no or a wrong client key.
    pub refused_proxy_auth: u64,
}

/// One upstream in the status; also the answer to its `refresh` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub prefix: String,
    pub host: Option<String>,
    /// The upstream's own listener, `IP:PORT`.
    pub listen: Option<String>,
    pub target: String,
    /// The auth kind as configured (`static`, `oauth2_client_credentials`, a vendor...).
    pub kind: String,
    pub login: LoginMethod,
    /// What the upstream offers: a static token offers nothing.
    pub actions: Vec<Action>,
    pub token: TokenStatus,
    pub requests: RequestCounts,
    /// A device login waiting for approval.
    pub pending_login: Option<DeviceView>,
    /// Fleet mode: who refreshes this upstream's shared token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// An upstream's place in the fleet (`store.redis`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The replica that holds the lease and alone calls the token endpoint (`host/pid`).
    pub holder: String,
    /// The lease's fencing generation: bumped at every new holder.
    pub generation: u64,
    /// This replica is the holder.
    pub this_replica: bool,
    /// The version of the shared entry this replica's token came from (0: none, or
    /// fetched alone while Redis was unreachable).
    pub version: u64,
    pub redis_reachable: bool,
    /// `keep_held_token` or `fetch_locally`.
    pub when_redis_down: String,
}

/// `POST /-/upstreams/NAME/ACTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Refresh,
    Login,
    Logout,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStatus {
    pub state: TokenState,
    pub expires_in_seconds: Option<u64>,
    pub expires_at_unix: Option<u64>,
    pub last_refresh_unix: Option<u64>,
    /// The last failed token request, in words with the secrets taken out.
    pub last_error: Option<String>,
    pub refreshes: u64,
    pub failures: u64,
    pub requests_waited: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub errors: u64,
    /// Of `total`, those that came through the egress listener.
    #[serde(default)]
    pub egress: u64,
}

/// The browser guard's refusals, by reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    pub foreign_host: u64,
    pub foreign_origin: u64,
    pub null_origin: u64,
    pub cross_site_fetch: u64,
}

/// What a user needs to approve a device login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds left.
    pub expires_in: u64,
    pub interval: u64,
}

/// How a login started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum LoginStarted {
    /// No user needed: a token was obtained now.
    Direct,
    /// Approve `user_code` at `verification_uri`; tokenproxy polls meanwhile.
    DeviceCode(DeviceView),
    /// Open `authorize_url` in a browser; the vendor sends it back to tokenproxy.
    Browser { authorize_url: String },
}

/// `POST /-/upstreams/NAME/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAnswer {
    pub upstream: String,
    #[serde(flatten)]
    pub started: LoginStarted,
}

/// `POST /-/upstreams/NAME/logout`: the upstream's status after it, and what became of
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutAnswer {
    #[serde(flatten)]
    pub upstream: UpstreamStatus,
    #[serde(flatten)]
    pub logout: Logout,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logout {
    pub had_token: bool,
    /// The vendor's revocation endpoint accepted the token.
    pub revoked: bool,
    /// Not revoked: until when a client that copied the token can still use it.
    pub still_valid_until_unix: Option<u64>,
    pub revocation_error: Option<String>,
}

/// `POST /-/upstreams/NAME/token`: a valid token and every header tokenproxy sends with
/// it, for `tokenproxy token` and `tokenproxy header`. The one admin answer that holds a
/// token, so it is an action (same origin, the action header), never a `GET`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenAnswer {
    pub upstream: String,
    pub token: String,
    /// `[name, value]` in the order a forwarded request carries them: the upstream's
    /// static `headers`, then the token's (`Authorization`, CAEPE's `Organization`).
    pub headers: Vec<(String, String)>,
    pub expires_in_seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upstream(name: &str) -> UpstreamStatus {
        UpstreamStatus {
            name: name.to_owned(),
            prefix: format!("/{name}"),
            host: Some(format!("{name}.localhost")),
            listen: None,
            target: "http://127.0.0.1:40000/".to_owned(),
            kind: "biganimal".to_owned(),
            login: LoginMethod::DeviceCode,
            actions: vec![Action::Refresh, Action::Login, Action::Logout],
            token: TokenStatus {
                state: TokenState::NeedsLogin,
                expires_in_seconds: None,
                expires_at_unix: Some(1_790_000_123),
                last_refresh_unix: None,
                last_error: Some("token endpoint answered HTTP 503".to_owned()),
                refreshes: 2,
                failures: 1,
                requests_waited: 0,
            },
            requests: RequestCounts {
                total: 10,
                errors: 1,
                egress: 4,
            },
            pending_login: Some(DeviceView {
                user_code: "ABCD-EFGH".to_owned(),
                verification_uri: "http://127.0.0.1:4000/activate".to_owned(),
                verification_uri_complete: None,
                expires_in: 590,
                interval: 5,
            }),
            fleet: Some(FleetStatus {
                holder: "pod-7/1".to_owned(),
                generation: 3,
                this_replica: false,
                version: 12,
                redis_reachable: true,
                when_redis_down: "keep_held_token".to_owned(),
            }),
        }
    }

    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
    }

    #[test]
    fn a_status_round_trips() {
        let status = Status {
            version: "0.1.0".to_owned(),
            now_unix: 1_790_000_000,
            ready: false,
            upstreams: vec![upstream("biganimal"), {
                let mut fixed = upstream("echo");
                fixed.login = LoginMethod::Direct;
                fixed.actions = Vec::new();
                fixed.token.state = TokenState::Valid;
                fixed.pending_login = None;
                fixed
            }],
            browser_guard_refusals: Refusals {
                foreign_host: 2,
                foreign_origin: 0,
                null_origin: 0,
                cross_site_fetch: 1,
            },
            store: "redis".to_owned(),
            egress: Some(EgressStatus {
                listen: Some("127.0.0.1:3128".to_owned()),
                intercepted_tunnels: 3,
                passthrough_tunnels: 1,
                refused_not_allowed: 2,
                refused_proxy_auth: 0,
            }),
            clients: vec![ClientStatus {
                name: "ci".to_owned(),
                policy: "bigid GET, HEAD".to_owned(),
                upstreams: Some(vec!["bigid".to_owned()]),
                admin: false,
                requests: 7,
                refused: PolicyRefusals {
                    method: 2,
                    ..PolicyRefusals::default()
                },
            }],
        };
        assert_eq!(round_trip(&status), status);
        for state in TokenState::ALL {
            let token = TokenStatus {
                state,
                ..upstream("x").token
            };
            assert_eq!(round_trip(&token), token);
        }
    }

    #[test]
    fn the_wire_names_are_the_documented_ones() {
        let value = serde_json::to_value(upstream("biganimal")).unwrap();
        assert_eq!(value["login"], "device_code");
        assert_eq!(value["actions"], json!(["refresh", "login", "logout"]));
        assert_eq!(value["token"]["state"], "needs_login");
        assert_eq!(value["token"]["expires_in_seconds"], json!(null));
        assert_eq!(value["pending_login"]["user_code"], "ABCD-EFGH");
        assert_eq!(
            value["pending_login"]["verification_uri_complete"],
            json!(null)
        );
    }

    #[test]
    fn the_action_answers_are_the_status_plus_their_own_fields() {
        let logout = LogoutAnswer {
            upstream: upstream("api"),
            logout: Logout {
                had_token: true,
                revoked: false,
                still_valid_until_unix: Some(1_796_061_845),
                revocation_error: None,
            },
        };
        let value = serde_json::to_value(&logout).unwrap();
        assert_eq!(value["name"], "api");
        assert_eq!(value["token"]["state"], "needs_login");
        assert_eq!(value["had_token"], true);
        assert_eq!(value["revocation_error"], json!(null));
        assert_eq!(round_trip(&logout), logout);

        for started in [
            LoginStarted::Direct,
            LoginStarted::DeviceCode(upstream("x").pending_login.unwrap()),
            LoginStarted::Browser {
                authorize_url: "https://vendor.example/authorize?state=s".to_owned(),
            },
        ] {
            let answer = LoginAnswer {
                upstream: "api".to_owned(),
                started,
            };
            let value = serde_json::to_value(&answer).unwrap();
            assert_eq!(value["upstream"], "api");
            assert!(value["method"].is_string(), "{value}");
            assert_eq!(round_trip(&answer), answer);
        }
        let device: LoginAnswer = serde_json::from_value(json!({
            "upstream": "ba", "method": "device_code", "user_code": "C", "verification_uri": "u",
            "expires_in": 600, "interval": 5,
        }))
        .unwrap();
        assert!(matches!(device.started, LoginStarted::DeviceCode(view) if view.user_code == "C"));
    }

    #[test]
    fn an_unknown_state_is_an_error_not_a_guess() {
        let mut value = serde_json::to_value(upstream("api").token).unwrap();
        value["state"] = "sleeping".into();
        assert!(serde_json::from_value::<TokenStatus>(value).is_err());
    }
}
