use std::collections::HashMap;

use super::*;

struct Env(HashMap<&'static str, &'static str>);

impl Sources for Env {
    fn env(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|v| v.to_string())
    }
    fn file(&self, _path: &str) -> std::io::Result<String> {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

fn parse_with(text: &str) -> Result<Config, ConfigError> {
    parse(
        text,
        "test.toml",
        &Env(HashMap::from([("SECRET", "s3cret")])),
    )
}

fn error_of(text: &str) -> String {
    let message = parse_with(text)
        .expect_err("config should be refused")
        .to_string();
    assert!(!message.contains('\n'), "error is not one line: {message}");
    assert!(
        message.starts_with("test.toml: "),
        "error does not name the file: {message}"
    );
    message
}

const BIGEVAL: &str = r#"
[upstreams.bigeval]
target = "https://bigeval.example/"
[upstreams.bigeval.auth]
kind = "bigeval"
client_id = "id"
client_secret = "${SECRET}"
"#;

#[test]
fn a_preset_fills_in_token_url_and_scope() {
    let config = parse_with(BIGEVAL).unwrap();
    assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
    let upstream = &config.upstreams[0];
    assert_eq!(upstream.prefix, "/bigeval");
    match &upstream.auth.source {
        crate::providers::TokenSourceSpec::OAuth(oauth) => {
            assert_eq!(
                oauth.endpoint.token_url,
                "https://bigeval.example/connect/token"
            );
            assert_eq!(oauth.endpoint.scope, ["bigeval-api-v1"]);
            assert_eq!(
                oauth.endpoint.client_secret.as_ref().unwrap().expose(),
                "s3cret"
            );
        }
        other => panic!("unexpected source {other:?}"),
    }
}

#[test]
fn each_bad_config_names_its_field() {
    let cases: &[(&str, &str)] = &[
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[server]\nlistn = \"127.0.0.1:1\"\n", "unknown field `listn`"),
        ("", "upstreams: no upstream is configured"),
        ("[upstreams.a]\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.a.target: missing"),
        ("[upstreams.a]\ntarget = \"ftp://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.a.target"),
        ("[upstreams.a]\ntarget = \"https://x/\"\n", "upstreams.a.auth: missing"),
        ("[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"magic\"\n", "upstreams.a.auth.kind: unknown kind \"magic\""),
        ("[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\n", "upstreams.a.auth.token: missing"),
        ("[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\nusername = \"u\"\n", "upstreams.a.auth.username: is not used by kind \"static\""),
        ("[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"client_credentials\"\nclient_id = \"i\"\nclient_secret = \"s\"\n", "upstreams.a.auth.token_url: missing"),
        ("[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"bigeval\"\nclient_id = \"i\"\nclient_secret = \"${NOPE}\"\n", "upstreams.a.auth.client_secret: environment variable NOPE is not set"),
        ("[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"caepe\"\ntoken_url = \"https://k/t\"\nusername = \"u\"\npassword = \"p\"\n", "upstreams.a.auth.organization: missing"),
        ("[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"caepe\"\ngrant = \"implicit\"\ntoken_url = \"https://k/t\"\norganization = \"o\"\n", "upstreams.a.auth.grant"),
        ("[upstreams.a]\ntarget = \"https://x/\"\nprefix = \"/-/x\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.a.prefix: /-/ is reserved"),
        ("[upstreams.a]\ntarget = \"https://x/\"\nconnect_timeout = \"5 parsecs\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.a.connect_timeout"),
        ("[upstreams.A]\ntarget = \"https://x/\"\n[upstreams.A.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.A: an upstream name"),
        ("[upstreams.a]\ntarget = \"https://x/\"\nprefix = \"/same\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n[upstreams.b]\ntarget = \"https://y/\"\nprefix = \"/same\"\n[upstreams.b.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.b.prefix: \"/same\" is already the prefix of upstream a"),
        ("[upstreams.a]\ntarget = \"https://x/\"\nheaders = { \"bad header\" = \"v\" }\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.a.headers.bad header"),
        ("[upstreams.a]\ntarget = \"https://x/\"\nca_file = \"/does/not/exist.pem\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.a.ca_file"),
        ("[upstreams.a\ntarget = 1\n", "test.toml: line 1:"),
        ("[upstreams.a]\ntarget = 42\n", "upstreams.a.target: invalid type"),
        ("[upstreams.a]\ntarget = \"https://x/\"\naddress = \"10.0.0.1:443\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "upstreams.a.address: \"10.0.0.1:443\" is not an IP address"),
        ("[egress]\nca_dir = \"/x\"\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "egress.listen: missing"),
        ("[egress]\nlisten = \"proxy\"\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "egress.listen: \"proxy\" is not an address:port"),
        ("[egress]\nlisten = \"127.0.0.1:3128\"\nca_dri = \"/x\"\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "unknown field `ca_dri`"),
        ("[egress]\nlisten = \"127.0.0.1:3128\"\nca_dir = \"\"\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "egress.ca_dir: must not be empty"),
        ("[egress]\nlisten = \"127.0.0.1:3128\"\npassthrough = [\"ok.example\", \"*\"]\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "egress.passthrough: \"*\" is not a host name"),
        ("[egress]\nlisten = \"127.0.0.1:3128\"\npassthrough = [\"a.example:0\"]\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "egress.passthrough: \"a.example:0\""),
        ("[egress]\nlisten = \"127.0.0.1:3128\"\nallow_unauthenticated_beyond_loopback = \"yes\"\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "egress.allow_unauthenticated_beyond_loopback: invalid type"),
        ("[egress]\nlisten = \"0.0.0.0:3128\"\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "server.client_key: required when egress listens beyond loopback (0.0.0.0:3128)"),
        ("[server]\nlisten = \"127.0.0.1:3128\"\n[egress]\nlisten = \"127.0.0.1:3128\"\n[upstreams.a]\ntarget = \"https://x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n", "egress.listen: 127.0.0.1:3128 is already used by server.listen"),
    ];
    for (text, expected) in cases {
        let message = error_of(text);
        assert!(
            message.contains(expected),
            "for {text:?}\nexpected {expected:?} in {message:?}"
        );
    }
}

#[test]
fn errors_never_show_secret_values() {
    let text = BIGEVAL.replace(
        "client_id = \"id\"",
        "client_id = \"id\"\nusername = \"${SECRET}\"",
    );
    let message = error_of(&text);
    assert!(message.contains("username"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn caepe_adds_the_organization_header_and_the_public_client() {
    let config = parse_with(
        r#"
[upstreams.caepe]
target = "https://api.acme.example/"
[upstreams.caepe.auth]
kind = "caepe"
token_url = "https://keycloak.acme.example/realms/biqmind/protocol/openid-connect/token"
username = "u"
password = "${SECRET}"
organization = "acme"
"#,
    )
    .unwrap();
    let auth = &config.upstreams[0].auth;
    assert_eq!(auth.injection.extra[0].0, "organization");
    assert_eq!(auth.injection.extra[0].1, "acme");
    match &auth.source {
        crate::providers::TokenSourceSpec::OAuth(oauth) => {
            assert_eq!(oauth.endpoint.client_id, "cape-client")
        }
        other => panic!("unexpected source {other:?}"),
    }
}

#[test]
fn durations_read_units() {
    let d = |text: &str| parse_duration(&RawDuration::Text(text.into()));
    assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
    assert_eq!(
        parse_duration(&RawDuration::Seconds(7)),
        Ok(Duration::from_secs(7))
    );
    assert!(d("soon").is_err());
    assert!(d("5 parsecs").is_err());
}

#[test]
fn targets_keep_their_base_path() {
    let target = Target::parse("https://h.example/api/").unwrap();
    assert_eq!(target.base_path, "/api");
    assert_eq!(
        target.join("connect/token"),
        "https://h.example/api/connect/token"
    );
    assert_eq!(Target::parse("https://h.example").unwrap().base_path, "");
    assert!(Target::parse("https://user:pw@h.example/").is_err());
}

#[test]
fn hosts_compare_without_case_port_or_trailing_dot() {
    assert_eq!(
        normalize_host("BigEval.Localhost.:8080"),
        "bigeval.localhost"
    );
    assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    assert_eq!(normalize_host("example.com"), "example.com");
}

#[test]
fn errors_stay_one_line_whatever_the_keys_hold() {
    let message = error_of("[upstreams.\"a\\nb\"]\ntarget = \"https://x/\"\n");
    assert!(message.contains("upstreams.a\\nb"), "{message}");
}

#[test]
fn values_from_the_environment_never_appear_in_errors() {
    for text in [
        "[server]\nlisten = \"${SECRET}\"\n",
        "[upstreams.a]\ntarget = \"https://u:${SECRET}@x/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n",
        "[upstreams.a]\ntarget = \"https://x/\"\nconnect_timeout = \"${SECRET}\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n",
    ] {
        let message = error_of(text);
        assert!(!message.contains("s3cret"), "{message}");
        assert!(message.contains("[value from ${...}]"), "{message}");
    }
}

#[test]
fn connection_timeouts_have_defaults_and_refuse_zero_or_nonsense() {
    let server = parse_with(BIGEVAL).unwrap().server;
    assert_eq!(
        (
            server.first_request_timeout,
            server.idle_timeout,
            server.body_timeout,
            server.write_timeout,
            server.h2_keepalive_interval
        ),
        (
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(30),
            Duration::from_secs(30),
            Duration::from_secs(30)
        )
    );
    for field in [
        "first_request_timeout",
        "idle_timeout",
        "body_timeout",
        "write_timeout",
        "h2_keepalive_interval",
    ] {
        for (value, problem) in [("\"0s\"", "must be more than 0"), ("\"soon\"", "\"soon\"")] {
            let message = error_of(&format!("[server]\n{field} = {value}\n{BIGEVAL}"));
            assert!(
                message.starts_with(&format!("test.toml: server.{field}: "))
                    && message.contains(problem),
                "{message}"
            );
        }
    }
}

#[test]
fn a_listener_beyond_loopback_needs_the_client_key_or_an_explicit_opt_out() {
    let upstream = |listen: &str| {
        format!("[upstreams.a]\ntarget = \"https://x/\"\nlisten = \"{listen}\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n")
    };
    for (server, upstream_listen) in [
        ("listen = \"0.0.0.0:8080\"", "127.0.0.1:8101"),
        ("listen = \"[::]:8080\"", "127.0.0.1:8101"),
        ("listen = \"192.168.1.10:8080\"", "127.0.0.1:8101"),
        ("", "0.0.0.0:8101"),
    ] {
        let text = format!("[server]\n{server}\n{}", upstream(upstream_listen));
        let message = error_of(&text);
        assert!(
            message.contains("server.client_key: required when listening beyond loopback"),
            "{message}"
        );
        let keyed = text.replace(
            "[server]\n",
            "[server]\nclient_key = \"k3y-0f-at-least-16\"\n",
        );
        let config = parse_with(&keyed).unwrap();
        assert!(
            !config.warnings().iter().any(|w| w.contains("client_key")),
            "{:?}",
            config.warnings()
        );
        let opted_out = text.replace(
            "[server]\n",
            "[server]\nallow_unauthenticated_beyond_loopback = true\n",
        );
        let config = parse_with(&opted_out).unwrap();
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("without server.client_key")),
            "{:?}",
            config.warnings()
        );
    }
    for loopback in ["127.0.0.2:8080", "[::1]:8080"] {
        let text = format!(
            "[server]\nlisten = \"{loopback}\"\n{}",
            upstream("127.0.0.1:8101")
        );
        let config = parse_with(&text).unwrap();
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    }
}

#[test]
fn fleet_settings_are_checked_and_name_their_field() {
    let key = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    let with_store = |store: &str| format!("[store]\n{store}\n{BIGEVAL}");
    let config = parse_with(&with_store(&format!(
        "redis = \"redis://127.0.0.1:6379/0\"\nencryption_key = \"{key}\"\nlease_ttl = \"3s\""
    )))
    .unwrap();
    let fleet = config.fleet.expect("fleet mode");
    assert_eq!(fleet.key_prefix, "tokenproxy:");
    assert_eq!(fleet.lease_ttl, Duration::from_secs(3));
    assert_eq!(fleet.reread_interval, Duration::from_secs(5));
    assert_eq!(config.store_path, None, "the fleet's tokens live in Redis");

    let cases = [
        ("redis = \"redis://r/0\"".to_owned(), "store.encryption_key: missing"),
        (format!("redis = \"http://r/0\"\nencryption_key = \"{key}\""), "store.redis: must be a redis://"),
        ("redis = \"redis://r/0\"\nencryption_key = \"c2hvcnQ=\"".to_owned(), "store.encryption_key: must be 32 random bytes"),
        (format!("redis = \"redis://r/0\"\nencryption_key = \"{key}\"\nprevious_encryption_keys = [\"x\"]"), "store.previous_encryption_keys[0]"),
        (format!("redis = \"redis://r/0\"\nencryption_key = \"{key}\"\npath = \"/tmp/t.json\""), "store.path: not used with store.redis"),
        ("lease_ttl = \"3s\"".to_owned(), "store.lease_ttl: only means something with store.redis"),
    ];
    for (store, expected) in cases {
        let message = error_of(&with_store(&store));
        assert!(message.contains(expected), "{store:?}: {message}");
        assert!(!message.contains(key), "{message}");
    }
    let message = error_of(&BIGEVAL.replace(
        "[upstreams.bigeval.auth]",
        "when_redis_down = \"panic\"\n[upstreams.bigeval.auth]",
    ));
    assert!(
        message.contains("upstreams.bigeval.when_redis_down"),
        "{message}"
    );
}

#[test]
fn egress_is_off_unless_configured_and_parsed_with_defaults() {
    assert!(parse_with(BIGEVAL).unwrap().egress.is_none());
    let text = format!(
        "[egress]\nlisten = \"127.0.0.1:3128\"\nca_dir = \"/tmp/ca\"\npassthrough = [\"*.Example.com\", \"pypi.org.\", \"git.example.net:8443\"]\n{BIGEVAL}"
    );
    let egress = parse_with(&text).unwrap().egress.unwrap();
    assert_eq!(egress.listen.to_string(), "127.0.0.1:3128");
    assert_eq!(egress.ca_dir, PathBuf::from("/tmp/ca"));
    let rules: Vec<(&str, u16)> = egress
        .passthrough
        .iter()
        .map(|rule| (rule.host.as_str(), rule.port))
        .collect();
    assert_eq!(
        rules,
        [
            ("*.example.com", 443),
            ("pypi.org", 443),
            ("git.example.net", 8443)
        ]
    );
    let wildcard = &egress.passthrough[0];
    assert!(wildcard.matches("files.Example.com", 443));
    assert!(wildcard.matches("a.b.example.com.", 443));
    assert!(!wildcard.matches("example.com", 443));
    assert!(!wildcard.matches("badexample.com", 443));
    assert!(!wildcard.matches("files.example.com", 8443));
    assert!(egress.passthrough[2].matches("git.example.net", 8443));
    assert!(!egress.passthrough[2].matches("git.example.net", 443));
    assert!(!egress.allow_unauthenticated_beyond_loopback);
}

#[test]
fn wide_egress_needs_a_key_or_the_explicit_flag() {
    let wide = format!("[egress]\nlisten = \"0.0.0.0:3128\"\nca_dir = \"/tmp/ca\"\n{BIGEVAL}");
    let with_key = format!("[server]\nclient_key = \"0123456789abcdef\"\n{wide}");
    assert!(parse_with(&with_key).is_ok());
    let flagged = wide.replace(
        "ca_dir = \"/tmp/ca\"",
        "ca_dir = \"/tmp/ca\"\nallow_unauthenticated_beyond_loopback = true",
    );
    let config = parse_with(&flagged).unwrap();
    assert!(
        config
            .warnings()
            .iter()
            .any(|w| w.contains("egress listens on 0.0.0.0:3128")),
        "{:?}",
        config.warnings()
    );
}

#[test]
fn egress_refuses_two_upstreams_at_one_vendor_url() {
    let second = "[upstreams.second]\ntarget = \"https://BigEval.example:443\"\n[upstreams.second.auth]\nkind = \"static\"\ntoken = \"t\"\n";
    let without_egress = format!("{BIGEVAL}{second}");
    assert!(parse_with(&without_egress).is_ok());
    let with_egress =
        format!("[egress]\nlisten = \"127.0.0.1:3128\"\nca_dir = \"/tmp/ca\"\n{without_egress}");
    let message = parse_with(&with_egress).unwrap_err().to_string();
    assert!(
        message.contains("upstreams.second.target: is upstream bigeval's URL too"),
        "{message}"
    );
    let other_path = with_egress.replace("example:443\"", "example:443/api\"");
    assert!(parse_with(&other_path).is_ok());
}
