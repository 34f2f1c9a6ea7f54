use std::os::unix::fs::PermissionsExt;

use super::*;

fn temp_ca(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenproxy-ca-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir.join("ca")
}

fn dns(name: &str) -> Host {
    Host::Dns(name.into())
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn config(targets: &[&str]) -> Config {
    let mut text = String::new();
    for (index, target) in targets.iter().enumerate() {
        text.push_str(&format!(
            "[upstreams.u{index}]\ntarget = \"{target}\"\n[upstreams.u{index}.auth]\nkind = \"static\"\ntoken = \"t\"\n"
        ));
    }
    crate::config::parse(&text, "test.toml", &crate::config::ProcessSources).unwrap()
}

#[test]
fn hosts_parse_as_certificates_name_them() {
    assert_eq!(
        Host::parse("BigEval.Example."),
        Some(dns("bigeval.example"))
    );
    assert_eq!(
        Host::parse("10.0.0.7"),
        Some(Host::Ip([10, 0, 0, 7].into()))
    );
    assert_eq!(
        Host::parse("[::1]"),
        Some(Host::Ip(std::net::Ipv6Addr::LOCALHOST.into()))
    );
    assert_eq!(Host::parse("*.example.com"), None);
    assert_eq!(Host::parse("bad host"), None);
    assert_eq!(Host::parse(""), None);
}

#[test]
fn the_scope_is_each_target_host_once_without_ports() {
    let config = config(&[
        "https://bigeval.example/",
        "https://api.bigid.example:8443/api/",
        "https://BIGEVAL.example:443/other/",
        "http://10.1.2.3:8080/",
    ]);
    assert_eq!(
        scope_of(&config),
        Scope::Limited(vec![
            dns("api.bigid.example"),
            dns("bigeval.example"),
            Host::Ip([10, 1, 2, 3].into()),
        ])
    );
}

#[test]
fn constraints_leave_no_name_type_open() {
    let only_dns = name_constraints(&[dns("bigeval.example")]);
    assert_eq!(
        only_dns.permitted_subtrees,
        [GeneralSubtree::DnsName("bigeval.example".into())]
    );
    // No IP host: every address is excluded, or any IP would be allowed.
    assert_eq!(
        only_dns.excluded_subtrees,
        [
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([0; 4], 0)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix([0; 16], 0)),
        ]
    );
    let only_ip = name_constraints(&[Host::Ip([10, 1, 2, 3].into())]);
    assert_eq!(
        only_ip.permitted_subtrees,
        [
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([10, 1, 2, 3], 32)),
            GeneralSubtree::DnsName("invalid".into()),
        ]
    );
    assert!(only_ip.excluded_subtrees.is_empty());
}

#[test]
fn init_writes_private_files_and_keeps_an_existing_ca() {
    let dir = temp_ca("init");
    let scope = Scope::Limited(vec![dns("bigeval.example")]);
    init(&dir, &scope, false).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(CERT_FILE)), 0o644);
    let before = fs::read(dir.join(KEY_FILE)).unwrap();
    assert!(matches!(
        init(&dir, &scope, false),
        Err(CaError::AlreadyExists { .. })
    ));
    assert_eq!(fs::read(dir.join(KEY_FILE)).unwrap(), before);
    init(&dir, &scope, true).unwrap();
    assert_ne!(fs::read(dir.join(KEY_FILE)).unwrap(), before);
}

#[test]
fn a_directory_others_can_enter_is_refused() {
    let dir = temp_ca("open");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let error = init(&dir, &Scope::Limited(vec![dns("a.example")]), false).unwrap_err();
    assert!(matches!(
        error,
        CaError::DirectoryTooOpen { mode: 0o755, .. }
    ));
}

#[test]
fn leaves_are_minted_for_vendor_hosts_only_and_cached() {
    let dir = temp_ca("leaves");
    let scope = Scope::Limited(vec![dns("bigeval.example"), Host::Ip([10, 1, 2, 3].into())]);
    init(&dir, &scope, false).unwrap();
    let ca = CertificateAuthority::load(&dir).unwrap();

    let (chain, _key) = ca.leaf_for("BigEval.example").unwrap();
    assert_eq!(chain.len(), 1);
    let (again, _) = ca.leaf_for("bigeval.example").unwrap();
    assert_eq!(
        chain, again,
        "a second leaf for the same host comes from the cache"
    );
    ca.leaf_for("10.1.2.3").unwrap();

    for outside in [
        "www.google.com",
        "bigeval.example.evil.com",
        "10.1.2.4",
        "::1",
    ] {
        assert!(
            matches!(
                ca.leaf_for(outside),
                Err(CaError::OutsideConstraints { .. })
            ),
            "{outside} was signed"
        );
    }
    assert!(matches!(
        ca.leaf_for("not a host"),
        Err(CaError::InvalidHost { .. })
    ));
}

#[test]
fn loading_a_missing_ca_says_how_to_create_one() {
    let error = CertificateAuthority::load(&temp_ca("missing")).unwrap_err();
    assert!(error.to_string().contains("tokenproxy ca init"), "{error}");
}

#[test]
fn pem_blocks_round_trip() {
    let der = vec![7u8; 100];
    assert_eq!(pem_certificate(&pem_block(&der)).unwrap().as_ref(), der);
}
