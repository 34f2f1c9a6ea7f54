//! The packaging examples are checked as files: the Dockerfile, the Kubernetes manifests in
//! `examples/kubernetes/` and `examples/kubernetes-fleet/`, the systemd unit, the launchd plist
//! and the Postman collection.
//!
//! Each check is a function that returns the problems it finds; the `shipped_*` tests assert
//! that the files in the repository have none, and the `catches_*` tests break one thing at a
//! time in a copy of the text and assert that the check reports it, so no assertion is one that
//! cannot fail. (hadolint lints the Dockerfile itself: `scripts/hadolint.sh`; newman runs the
//! collection against `tokenproxy demo`: `scripts/postman.sh`.)

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokenproxy::config::Sources;
use yaml_rust2::{Yaml, YamlLoader};

const PORT: u16 = 8080;
/// How much longer than `server.drain_timeout` the pod's grace period must be.
const GRACE_MARGIN: Duration = Duration::from_secs(3);
const HEALTH: &str = "/-/health";
const READY: &str = "/-/ready";
const KUBERNETES: &str = "examples/kubernetes";
const KUBERNETES_FLEET: &str = "examples/kubernetes-fleet";

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifests of one example directory: (file name, text), in name order.
fn kubernetes_files(dir: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            )
        })
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn assert_clean(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// Asserts that `needle` is in `text`, replaces it, and returns the problems `check` finds in
/// the result: at least one must mention `expected`.
fn assert_caught(
    text: &str,
    needle: &str,
    replacement: &str,
    check: impl Fn(&str) -> Vec<String>,
    expected: &str,
) {
    assert!(
        text.contains(needle),
        "the test's needle {needle:?} is not in the file"
    );
    let broken = text.replacen(needle, replacement, 1);
    let problems = check(&broken);
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "replacing {needle:?} with {replacement:?}: expected a problem mentioning {expected:?}, got {problems:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// The Dockerfile's instructions, continuation lines joined, comments dropped:
/// (INSTRUCTION in upper case, arguments).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let joined = std::mem::take(&mut current);
        if let Some((word, rest)) = joined.split_once(char::is_whitespace) {
            instructions.push((word.to_uppercase(), rest.trim().to_owned()));
        } else if !joined.is_empty() {
            instructions.push((joined.to_uppercase(), String::new()));
        }
    }
    instructions
}

fn dockerfile_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let instructions = dockerfile_instructions(text);
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (word, _))| word == "FROM")
        .map(|(index, _)| index)
        .collect();
    if froms.len() < 2 {
        problems.push("Dockerfile: not multi-stage (a build stage and a run stage)".to_owned());
        return problems;
    }
    let last_from = *froms.last().unwrap();
    let (build, run) = instructions.split_at(last_from);
    if !build
        .iter()
        .any(|(word, args)| word == "RUN" && args.contains("cargo build --release --locked"))
    {
        problems.push(
            "Dockerfile: the build stage does not run `cargo build --release --locked`".into(),
        );
    }
    // The run stage has no shell: nothing in it may need one.
    for (word, args) in run {
        if word == "RUN" {
            problems.push(format!(
                "Dockerfile: the run stage has a RUN (needs a shell): {args}"
            ));
        }
        if matches!(word.as_str(), "CMD" | "ENTRYPOINT") && !args.starts_with('[') {
            problems.push(format!(
                "Dockerfile: {word} in shell form (needs a shell): {args}"
            ));
        }
    }
    let run_args = |name: &str| -> Vec<&str> {
        run.iter()
            .filter(|(word, _)| word == name)
            .map(|(_, args)| args.as_str())
            .collect()
    };
    if !run_args("EXPOSE").iter().any(|args| {
        args.split_whitespace()
            .any(|port| port == "8080" || port == "8080/tcp")
    }) {
        problems.push("Dockerfile: no EXPOSE 8080 in the run stage".into());
    }
    if run_args("STOPSIGNAL") != ["SIGTERM"] {
        problems.push("Dockerfile: STOPSIGNAL is not SIGTERM".into());
    }
    match run_args("USER").last() {
        None => problems.push("Dockerfile: no USER in the run stage (runs as root)".into()),
        Some(user) => {
            let name = user.split(':').next().unwrap_or_default();
            if name == "root" || name == "0" {
                problems.push(format!("Dockerfile: USER {user} is root"));
            }
        }
    }
    match run_args("HEALTHCHECK").last() {
        None => problems.push("Dockerfile: no HEALTHCHECK".into()),
        Some(args) => {
            let command = args.split_once("CMD ").map(|(_, command)| command.trim());
            let parsed: Option<Vec<String>> =
                command.and_then(|command| serde_json::from_str(command).ok());
            if parsed.as_deref()
                != Some(&["/usr/local/bin/tokenproxy".to_owned(), "health".to_owned()][..])
            {
                problems.push(format!(
                    "Dockerfile: HEALTHCHECK is not CMD [\"/usr/local/bin/tokenproxy\", \"health\"]: {args}"
                ));
            }
        }
    }
    let volumes = run_args("VOLUME").join(" ");
    for path in ["/etc/tokenproxy", "/var/lib/tokenproxy"] {
        if !volumes.contains(&format!("\"{path}\""))
            && !volumes.split_whitespace().any(|v| v == path)
        {
            problems.push(format!("Dockerfile: {path} is not a VOLUME"));
        }
    }
    match run_args("ENTRYPOINT").last() {
        Some(args) if args.contains("\"/usr/local/bin/tokenproxy\"") => {}
        other => problems.push(format!(
            "Dockerfile: ENTRYPOINT is not the binary: {other:?}"
        )),
    }
    problems
}

#[test]
fn shipped_dockerfile_is_complete() {
    assert_clean("Dockerfile", dockerfile_problems(&repo_file("Dockerfile")));
}

#[test]
fn catches_dockerfile_mistakes() {
    let text = repo_file("Dockerfile");
    let check = dockerfile_problems;
    assert_caught(&text, "EXPOSE 8080", "EXPOSE 9090", check, "EXPOSE 8080");
    assert_caught(
        &text,
        "STOPSIGNAL SIGTERM",
        "STOPSIGNAL SIGKILL",
        check,
        "STOPSIGNAL",
    );
    assert_caught(&text, "USER 65532:65532", "USER root", check, "is root");
    assert_caught(&text, "USER 65532:65532", "", check, "no USER");
    assert_caught(&text, "\"health\"]", "\"status\"]", check, "HEALTHCHECK");
    assert_caught(
        &text,
        "HEALTHCHECK",
        "# HEALTHCHECK",
        check,
        "no HEALTHCHECK",
    );
    assert_caught(
        &text,
        "--locked",
        "",
        check,
        "cargo build --release --locked",
    );
    assert_caught(
        &text,
        "\"/var/lib/tokenproxy\"]",
        "]",
        check,
        "/var/lib/tokenproxy is not",
    );
    assert_caught(
        &text,
        "CMD [\"run\"]",
        "RUN echo\nCMD run",
        check,
        "needs a shell",
    );
    assert_caught(&text, "FROM gcr.io", "# FROM gcr.io", check, "multi-stage");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every `${...}` resolves to a dummy; the files asked for are remembered. The file dummy is
/// base64 of 32 bytes, so it also serves as `store.encryption_key`.
#[derive(Default)]
struct DummySources {
    files: RefCell<Vec<String>>,
}

impl Sources for DummySources {
    fn env(&self, _name: &str) -> Option<String> {
        Some("dummy-environment-value-0123456789".to_owned())
    }

    fn file(&self, path: &str) -> std::io::Result<String> {
        self.files.borrow_mut().push(path.to_owned());
        Ok("ZHVtbXktc2VjcmV0LWZpbGUtdmFsdWUtMDEyMzQ1Njc=".to_owned())
    }
}

fn yaml_list(yaml: &Yaml) -> &[Yaml] {
    yaml.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

fn string_list(yaml: &Yaml) -> Vec<String> {
    yaml_list(yaml)
        .iter()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect()
}

fn named<'a>(items: &'a [Yaml], name: &str) -> Option<&'a Yaml> {
    items
        .iter()
        .find(|item| item["name"].as_str() == Some(name))
}

/// What a probe checks: (path, port). `listen_port` is where `tokenproxy health` goes
/// without `--url`.
fn probe_target(probe: &Yaml, listen_port: u16) -> Result<(String, u16), String> {
    if !probe["exec"].is_badvalue() {
        let command = string_list(&probe["exec"]["command"]);
        let binary_ok = command.first().is_some_and(|c| c.ends_with("/tokenproxy"));
        if !binary_ok || command.get(1).map(String::as_str) != Some("health") {
            return Err(format!(
                "exec probe is not `tokenproxy health`: {command:?}"
            ));
        }
        return match command.iter().position(|arg| arg == "--url") {
            None if command.len() == 2 => Ok((HEALTH.to_owned(), listen_port)),
            None => Err(format!("unexpected arguments: {command:?}")),
            Some(at) => {
                let url = command
                    .get(at + 1)
                    .ok_or_else(|| format!("--url without a URL: {command:?}"))?;
                let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
                if !matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")) {
                    return Err(format!("{url}: not this pod's loopback"));
                }
                Ok((
                    parsed.path().to_owned(),
                    parsed.port_or_known_default().unwrap_or(0),
                ))
            }
        };
    }
    if !probe["httpGet"].is_badvalue() {
        let path = probe["httpGet"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let port = probe["httpGet"]["port"].as_i64().unwrap_or(0);
        return Ok((path, u16::try_from(port).unwrap_or(0)));
    }
    Err("neither an exec nor an httpGet probe".to_owned())
}

/// The documents of one example's manifests.
struct Manifests {
    docs: Vec<Yaml>,
}

impl Manifests {
    /// Every document of every file; a file that is not YAML is a problem.
    fn load(files: &[(String, String)], problems: &mut Vec<String>) -> Manifests {
        let mut docs = Vec::new();
        for (name, text) in files {
            match YamlLoader::load_from_str(text) {
                Ok(loaded) => docs.extend(loaded.into_iter().filter(|doc| !doc.is_null())),
                Err(e) => problems.push(format!("{name}: not YAML: {e}")),
            }
        }
        Manifests { docs }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.docs
            .iter()
            .filter(|doc| doc["kind"].as_str() == Some(kind))
            .collect()
    }

    fn by_name(&self, kind: &str, name: &str) -> Option<&Yaml> {
        self.of_kind(kind)
            .into_iter()
            .find(|doc| doc["metadata"]["name"].as_str() == Some(name))
    }

    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.by_name("Secret", name)?;
        [&secret["stringData"], &secret["data"]]
            .into_iter()
            .find_map(|data| data[key].as_str().map(str::to_owned))
    }
}

/// The one Deployment's tokenproxy container, its pod, and the config it reads.
struct Sidecar<'a> {
    deployment: &'a Yaml,
    pod: &'a Yaml,
    proxy: &'a Yaml,
    apps: Vec<&'a Yaml>,
    mounts: &'a [Yaml],
    volumes: &'a [Yaml],
    config_text: String,
    /// "configMap NAME KEY", for messages.
    config_source: String,
}

impl<'a> Sidecar<'a> {
    /// Err: what is missing, after which nothing else can be checked.
    fn find(manifests: &'a Manifests) -> Result<Sidecar<'a>, String> {
        let deployments = manifests.of_kind("Deployment");
        let [deployment] = deployments[..] else {
            return Err(format!(
                "expected one Deployment, found {}",
                deployments.len()
            ));
        };
        let pod = &deployment["spec"]["template"]["spec"];
        let containers = yaml_list(&pod["containers"]);
        let init_containers = yaml_list(&pod["initContainers"]);
        let is_tokenproxy = |c: &&Yaml| {
            c["name"].as_str() == Some("tokenproxy")
                || c["image"]
                    .as_str()
                    .is_some_and(|image| image.contains("tokenproxy"))
        };
        let proxy = match containers.iter().find(is_tokenproxy) {
            Some(proxy) => proxy,
            None => match init_containers.iter().find(is_tokenproxy) {
                // A native sidecar: an init container that keeps running.
                Some(proxy) if proxy["restartPolicy"].as_str() == Some("Always") => proxy,
                Some(_) => {
                    return Err(
                        "the tokenproxy init container lacks restartPolicy: Always (it would block the pod)"
                            .into(),
                    )
                }
                None => return Err("no tokenproxy container in the Deployment".into()),
            },
        };
        let apps = containers.iter().filter(|c| !is_tokenproxy(c)).collect();
        let volumes = yaml_list(&pod["volumes"]);
        let mounts = yaml_list(&proxy["volumeMounts"]);

        // The config: a ConfigMap volume mounted into the sidecar, at the path it reads.
        let env = yaml_list(&proxy["env"]);
        let config_path = named(env, "TOKENPROXY_CONFIG")
            .and_then(|var| var["value"].as_str())
            .unwrap_or("/etc/tokenproxy/config.toml");
        let (config_text, config_source) =
            mounted_file(config_path, mounts, volumes, "configMap", |name, key| {
                manifests
                    .by_name("ConfigMap", name)
                    .and_then(|map| map["data"][key].as_str().map(str::to_owned))
            })
            .ok_or_else(|| {
                format!(
                    "the sidecar's config {config_path} is not a key of a ConfigMap mounted into it"
                )
            })?;
        Ok(Sidecar {
            deployment,
            pod,
            proxy,
            apps,
            mounts,
            volumes,
            config_text,
            config_source,
        })
    }

    /// The file at `path` if it comes from a Secret mounted into the sidecar: (content,
    /// "secret NAME KEY").
    fn secret_file(&self, manifests: &Manifests, path: &str) -> Option<(String, String)> {
        mounted_file(path, self.mounts, self.volumes, "secret", |name, key| {
            manifests.secret_value(name, key)
        })
    }
}

/// A container's command and args, each split on whitespace: enough to find a URL in a
/// script or an option's value, whether given as one arg or two.
fn command_words(container: &Yaml) -> Vec<String> {
    [&container["command"], &container["args"]]
        .into_iter()
        .flat_map(string_list)
        .flat_map(|arg| {
            arg.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn kubernetes_problems(files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let manifests = Manifests::load(files, &mut problems);
    let sidecar = match Sidecar::find(&manifests) {
        Ok(sidecar) => sidecar,
        Err(problem) => {
            problems.push(problem);
            return problems;
        }
    };
    let Sidecar {
        pod,
        proxy,
        mounts,
        volumes,
        ..
    } = sidecar;
    let apps = &sidecar.apps;
    if apps.is_empty() {
        problems.push("no app container next to the tokenproxy sidecar".into());
    }
    let sources = DummySources::default();
    let config =
        match tokenproxy::config::parse(&sidecar.config_text, &sidecar.config_source, &sources) {
            Ok(config) => config,
            Err(e) => {
                problems.push(format!("the config does not parse: {e}"));
                return problems;
            }
        };
    let listen = config.server.listen;
    if listen.port() != PORT {
        problems.push(format!("the config listens on {listen}, not port {PORT}"));
    }

    // Probes.
    for (probe_name, expected) in [("livenessProbe", HEALTH), ("readinessProbe", READY)] {
        match probe_target(&proxy[probe_name], listen.port()) {
            Ok((path, port)) if path == expected && port == PORT => {}
            Ok((path, port)) => problems.push(format!(
                "{probe_name} checks {path} on port {port}, not {expected} on {PORT}"
            )),
            Err(e) => problems.push(format!("{probe_name}: {e}")),
        }
    }
    if listen.ip().is_loopback() {
        for probe_name in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if !proxy[probe_name]["httpGet"].is_badvalue() {
                problems.push(format!(
                    "{probe_name} is an httpGet from the kubelet, but the proxy listens on loopback ({listen})"
                ));
            }
        }
    }

    // Shutdown: the grace period covers the drain.
    let drain = config.server.drain_timeout;
    match pod["terminationGracePeriodSeconds"].as_i64() {
        None => problems.push(
            "no terminationGracePeriodSeconds (default 30 s is not derived from the drain time)"
                .into(),
        ),
        Some(grace) => {
            let needed = drain + GRACE_MARGIN;
            if Duration::from_secs(u64::try_from(grace).unwrap_or(0)) < needed {
                problems.push(format!(
                    "terminationGracePeriodSeconds {grace} is less than drain_timeout {drain:?} + {GRACE_MARGIN:?}"
                ));
            }
        }
    }

    // Every secret file the config reads is a key of a Secret mounted into the sidecar.
    let secret_files = sources.files.borrow().clone();
    if secret_files.is_empty() {
        problems.push("the config reads no ${file:...} secret".into());
    }
    for path in &secret_files {
        if sidecar.secret_file(&manifests, path).is_none() {
            problems.push(format!(
                "the config reads {path}, which is no key of a Secret mounted into the sidecar"
            ));
        }
    }

    // The store: a writable volume holds it.
    if let Some(store) = config.store_path.as_deref() {
        let held = mounts.iter().any(|mount| {
            let at = mount["mountPath"].as_str().unwrap_or_default();
            let writable = mount["readOnly"].as_bool() != Some(true);
            let volume = named(volumes, mount["name"].as_str().unwrap_or_default());
            let kind_ok = volume.is_some_and(|v| {
                !v["emptyDir"].is_badvalue() || !v["persistentVolumeClaim"].is_badvalue()
            });
            writable && kind_ok && store.starts_with(at)
        });
        if !held {
            problems.push(format!(
                "the store {} is not on a writable emptyDir or persistentVolumeClaim mount",
                store.display()
            ));
        }
    }

    // The app reaches the proxy at the configured port.
    let base = [
        format!("localhost:{}", listen.port()),
        format!("127.0.0.1:{}", listen.port()),
    ];
    let app_calls_proxy = apps.iter().any(|app| {
        command_words(app)
            .iter()
            .any(|word| base.iter().any(|b| word.contains(&format!("http://{b}/"))))
    });
    if !apps.is_empty() && !app_calls_proxy {
        problems.push(format!(
            "no app container calls http://localhost:{}/",
            listen.port()
        ));
    }
    problems
}

/// The content of the file at `path` as seen in a container with `mounts`, when it comes from a
/// volume of `kind` (`configMap` or `secret`): `lookup(object name, key)` gives the content.
/// Returns (content, "kind name key").
fn mounted_file(
    path: &str,
    mounts: &[Yaml],
    volumes: &[Yaml],
    kind: &str,
    lookup: impl Fn(&str, &str) -> Option<String>,
) -> Option<(String, String)> {
    let name_field = if kind == "secret" {
        "secretName"
    } else {
        "name"
    };
    mounts.iter().find_map(|mount| {
        let at = PathBuf::from(mount["mountPath"].as_str()?);
        let volume = named(volumes, mount["name"].as_str()?)?;
        let source = &volume[kind];
        let object = source[name_field].as_str()?;
        // The file's path inside the volume.
        let inside = match mount["subPath"].as_str() {
            Some(sub) if Path::new(path) == at => sub.to_owned(),
            Some(_) => return None,
            None => Path::new(path).strip_prefix(&at).ok()?.to_str()?.to_owned(),
        };
        // `items` maps keys to paths, and then only those keys are there.
        let key = match source["items"].as_vec() {
            Some(items) => items
                .iter()
                .find(|item| item["path"].as_str() == Some(inside.as_str()))?["key"]
                .as_str()?
                .to_owned(),
            None => inside,
        };
        let content = lookup(object, &key)?;
        Some((content, format!("{kind} {object} {key}")))
    })
}

/// The manifests of `dir`, with `file`'s text replaced by `text`.
fn kubernetes_files_with(dir: &str, file: &str, text: &str) -> Vec<(String, String)> {
    kubernetes_files(dir)
        .into_iter()
        .map(|(name, original)| {
            let content = if name == file {
                text.to_owned()
            } else {
                original
            };
            (name, content)
        })
        .collect()
}

fn kubernetes_problems_with(file: &str, text: &str) -> Vec<String> {
    kubernetes_problems(&kubernetes_files_with(KUBERNETES, file, text))
}

#[test]
fn shipped_kubernetes_example_is_consistent() {
    let files = kubernetes_files(KUBERNETES);
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert!(names.contains(&"deployment.yaml"), "{names:?}");
    assert_clean(KUBERNETES, kubernetes_problems(&files));
}

#[test]
fn catches_kubernetes_mistakes() {
    let deployment = repo_file("examples/kubernetes/deployment.yaml");
    let check = |text: &str| kubernetes_problems_with("deployment.yaml", text);
    assert_caught(
        &deployment,
        "terminationGracePeriodSeconds: 15",
        "terminationGracePeriodSeconds: 11",
        check,
        "terminationGracePeriodSeconds 11",
    );
    assert_caught(
        &deployment,
        "terminationGracePeriodSeconds: 15",
        "",
        check,
        "no terminationGracePeriodSeconds",
    );
    assert_caught(
        &deployment,
        "\"http://127.0.0.1:8080/-/ready\"",
        "\"http://127.0.0.1:8080/-/status\"",
        check,
        "readinessProbe checks /-/status",
    );
    assert_caught(
        &deployment,
        "\"http://127.0.0.1:8080/-/ready\"",
        "\"http://127.0.0.1:9090/-/ready\"",
        check,
        "on port 9090",
    );
    assert_caught(
        &deployment,
        "\"health\"]\n            periodSeconds: 10",
        "\"status\"]\n            periodSeconds: 10",
        check,
        "livenessProbe: exec probe is not",
    );
    assert_caught(
        &deployment,
        "mountPath: /run/secrets/tokenproxy",
        "mountPath: /run/secrets/other",
        check,
        "no key of a Secret",
    );
    assert_caught(
        &deployment,
        "secretName: tokenproxy-secrets",
        "secretName: other-secrets",
        check,
        "no key of a Secret",
    );
    assert_caught(
        &deployment,
        "name: config\n          configMap:\n            name: tokenproxy-config",
        "name: config\n          configMap:\n            name: other",
        check,
        "is not a key of a ConfigMap",
    );
    assert_caught(
        &deployment,
        "value: /etc/tokenproxy/config.toml",
        "value: /etc/tokenproxy/other.toml",
        check,
        "is not a key of a ConfigMap",
    );
    assert_caught(
        &deployment,
        "\n          restartPolicy: Always",
        "\n          restartPolicy: OnFailure",
        check,
        "restartPolicy: Always",
    );
    assert_caught(
        &deployment,
        "initContainers:",
        "otherContainers:",
        check,
        "no tokenproxy container",
    );
    assert_caught(
        &deployment,
        "curl -fsS http://localhost:8080/",
        "curl -fsS http://localhost:9999/",
        check,
        "no app container calls",
    );
    assert_caught(
        &deployment,
        "mountPath: /var/lib/tokenproxy\n",
        "mountPath: /var/lib/tokenproxy\n              readOnly: true\n",
        check,
        "the store",
    );
    assert_caught(
        &deployment,
        "kind: Deployment",
        "kind: StatefulSet",
        check,
        "expected one Deployment",
    );
    assert_caught(
        &deployment,
        "  template:",
        "  template: [",
        check,
        "not YAML",
    );

    let secret = repo_file("examples/kubernetes/secret.yaml");
    let check = |text: &str| kubernetes_problems_with("secret.yaml", text);
    assert_caught(
        &secret,
        "bigid_user_token:",
        "bigid_token:",
        check,
        "/run/secrets/tokenproxy/bigid_user_token",
    );

    let configmap = repo_file("examples/kubernetes/configmap.yaml");
    let check = |text: &str| kubernetes_problems_with("configmap.yaml", text);
    assert_caught(
        &configmap,
        "drain_timeout = \"10s\"",
        "drain_timeout = \"20s\"",
        check,
        "drain_timeout 20s",
    );
    assert_caught(
        &configmap,
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8081\"",
        check,
        "not port 8080",
    );
    assert_caught(
        &configmap,
        "kind = \"bigid\"",
        "kind = \"bigidd\"",
        check,
        "does not parse",
    );
    assert_caught(
        &configmap,
        "${file:/run/secrets/tokenproxy/bigid_user_token}",
        "${file:/run/secrets/bigid_user_token}",
        check,
        "/run/secrets/bigid_user_token, which is no key",
    );
    assert_caught(
        &configmap,
        "path = \"/var/lib/tokenproxy/store/tokens.json\"",
        "path = \"/tmp/tokens.json\"",
        check,
        "the store /tmp/tokens.json",
    );
}

#[test]
fn probe_targets_cover_exec_and_http_get() {
    let probe = |text: &str| YamlLoader::load_from_str(text).unwrap().remove(0);
    assert_eq!(
        probe_target(
            &probe("exec: {command: [/usr/local/bin/tokenproxy, health]}"),
            8080
        ),
        Ok((HEALTH.to_owned(), 8080))
    );
    assert_eq!(
        probe_target(&probe("httpGet: {path: /-/ready, port: 8080}"), 1),
        Ok((READY.to_owned(), 8080))
    );
    assert!(probe_target(&probe("exec: {command: [/usr/local/bin/tokenproxy, health, --url, 'http://10.0.0.1:8080/-/ready']}"), 8080).is_err());
    assert!(probe_target(&probe("tcpSocket: {port: 8080}"), 8080).is_err());
}

// ---------------------------------------------------------------------------------------------
// Kubernetes fleet: the sidecars above, several replicas, and the Redis they share

/// The Kubernetes checks, then the fleet's: the config uses Redis and no store file, the app
/// runs as several replicas, and the one Redis is reached through a Service, keeps an
/// append-only file on a volume claim, has a readiness probe, and requires the password the
/// sidecars read from the same Secret key.
fn fleet_problems(files: &[(String, String)]) -> Vec<String> {
    let mut problems = kubernetes_problems(files);
    // What stops these (not YAML, no sidecar, a config that does not parse) is reported above.
    let manifests = Manifests::load(files, &mut Vec::new());
    let Ok(sidecar) = Sidecar::find(&manifests) else {
        return problems;
    };
    let Ok(config) = toml::from_str::<toml::Table>(&sidecar.config_text) else {
        return problems;
    };
    let store = |key: &str| {
        config
            .get("store")
            .and_then(|store| store.get(key))
            .and_then(toml::Value::as_str)
    };
    if store("path").is_some() {
        problems.push("the config sets store.path: a fleet keeps its tokens in Redis".into());
    }
    let replicas = sidecar.deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    if replicas < 2 {
        problems.push(format!("the Deployment has replicas: {replicas}, no fleet"));
    }
    let Some(url) = store("redis") else {
        problems.push("the config has no store.redis: the replicas would not share tokens".into());
        return problems;
    };

    let is_redis = |container: &&Yaml| {
        let image = container["image"].as_str().unwrap_or_default();
        let name = image.rsplit('/').next().unwrap_or_default();
        matches!(name.split(':').next(), Some("redis" | "valkey"))
    };
    let redises: Vec<(&Yaml, &Yaml)> = ["StatefulSet", "Deployment"]
        .into_iter()
        .flat_map(|kind| manifests.of_kind(kind))
        .flat_map(|workload| {
            yaml_list(&workload["spec"]["template"]["spec"]["containers"])
                .iter()
                .filter(is_redis)
                .map(move |container| (workload, container))
        })
        .collect();
    let [(workload, redis)] = redises[..] else {
        problems.push(format!(
            "expected one Redis (a redis or valkey container in a StatefulSet or Deployment), found {}",
            redises.len()
        ));
        return problems;
    };

    // store.redis names a Service that leads to that Redis.
    match url::Url::parse(url) {
        Err(e) => problems.push(format!("store.redis {url}: {e}")),
        Ok(parsed) => {
            // NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc.cluster.local
            let host = parsed.host_str().unwrap_or_default();
            let name = host.split('.').next().unwrap_or_default();
            let port = i64::from(parsed.port().unwrap_or(6379));
            match manifests.by_name("Service", name) {
                None => problems.push(format!("store.redis names {host}, which is no Service")),
                Some(service) => {
                    problems.extend(service_problems(service, workload, redis, port));
                }
            }
        }
    }

    let words = command_words(redis);
    let option = |name: &str| {
        let at = words.iter().position(|word| word == name)?;
        words.get(at + 1).map(String::as_str)
    };
    if option("--appendonly") != Some("yes") {
        problems.push(
            "Redis runs without --appendonly yes: restarted, it forgets the newest refresh tokens"
                .into(),
        );
    }
    let claimed = yaml_list(&redis["volumeMounts"])
        .iter()
        .find(|mount| mount["mountPath"].as_str() == Some("/data"))
        .and_then(|mount| mount["name"].as_str())
        .is_some_and(|volume| {
            let templates = yaml_list(&workload["spec"]["volumeClaimTemplates"]);
            let pod_volumes = yaml_list(&workload["spec"]["template"]["spec"]["volumes"]);
            templates
                .iter()
                .any(|template| template["metadata"]["name"].as_str() == Some(volume))
                || named(pod_volumes, volume)
                    .is_some_and(|v| !v["persistentVolumeClaim"].is_badvalue())
        });
    if !claimed {
        problems.push(
            "Redis's /data is not on a PersistentVolumeClaim: its append-only file would go with the pod"
                .into(),
        );
    }
    if redis["readinessProbe"].is_badvalue() {
        problems.push("Redis has no readinessProbe".into());
    }

    // The password: Redis's --requirepass $(VAR), VAR from the Secret key the sidecars read.
    let sidecar_password = store("redis_password")
        .and_then(|value| value.strip_prefix("${file:")?.strip_suffix('}'))
        .and_then(|path| sidecar.secret_file(&manifests, path))
        .map(|(_, source)| source);
    let redis_password = option("--requirepass")
        .and_then(|value| value.strip_prefix("$(")?.strip_suffix(')'))
        .and_then(|var| named(yaml_list(&redis["env"]), var))
        .and_then(|var| {
            let reference = &var["valueFrom"]["secretKeyRef"];
            Some(format!(
                "secret {} {}",
                reference["name"].as_str()?,
                reference["key"].as_str()?
            ))
        });
    match (sidecar_password, redis_password) {
        (None, _) => problems.push(
            "store.redis_password is not a ${file:...} of a Secret mounted into the sidecar".into(),
        ),
        (_, None) => problems.push(
            "Redis's --requirepass is not $(VAR) with VAR from a Secret (secretKeyRef)".into(),
        ),
        (Some(sidecar), Some(redis)) if sidecar != redis => problems.push(format!(
            "Redis's --requirepass comes from {redis}, the sidecars' store.redis_password from {sidecar}"
        )),
        _ => {}
    }
    problems
}

/// The Service selects the pods of `workload` and sends `port` to a port of `container`.
fn service_problems(service: &Yaml, workload: &Yaml, container: &Yaml, port: i64) -> Vec<String> {
    let mut problems = Vec::new();
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    let selects = service["spec"]["selector"]
        .as_hash()
        .is_some_and(|selector| {
            !selector.is_empty()
                && selector
                    .iter()
                    .all(|(key, value)| key.as_str().is_some_and(|key| &labels[key] == value))
        });
    if !selects {
        problems.push(format!("the Service {name} does not select the Redis pods"));
    }
    let container_ports = yaml_list(&container["ports"]);
    let Some(service_port) = yaml_list(&service["spec"]["ports"])
        .iter()
        .find(|p| p["port"].as_i64() == Some(port))
    else {
        problems.push(format!(
            "the Service {name} has no port {port} (store.redis)"
        ));
        return problems;
    };
    let target = &service_port["targetPort"];
    let reaches = container_ports.iter().any(|p| match target.as_str() {
        Some(port_name) => p["name"].as_str() == Some(port_name),
        None => p["containerPort"].as_i64() == Some(target.as_i64().unwrap_or(port)),
    });
    if !reaches {
        problems.push(format!(
            "the Service {name}'s port {port} leads to no port of the Redis container"
        ));
    }
    problems
}

#[test]
fn shipped_kubernetes_fleet_example_is_consistent() {
    // (An empty or missing directory fails too: it has no Deployment.)
    let files = kubernetes_files(KUBERNETES_FLEET);
    assert_clean(KUBERNETES_FLEET, fleet_problems(&files));
}

#[test]
fn catches_kubernetes_fleet_mistakes() {
    let configmap = repo_file("examples/kubernetes-fleet/configmap.yaml");
    let store_start = configmap.find("    [store]").unwrap();
    let store_end = configmap.find("    [upstreams.bigeval]").unwrap();
    let store_block = &configmap[store_start..store_end];
    // (file, needle, replacement, expected problem)
    let cases = [
        (
            "configmap.yaml",
            "redis = \"redis://tokenproxy-redis:6379/0\"",
            "redis = \"redis://tokenproxy-redis:6379/0\"\n    path = \"/var/lib/tokenproxy/tokens.json\"",
            "sets store.path",
        ),
        (
            "configmap.yaml",
            store_block,
            "    [store]\n    path = \"memory\"\n\n",
            "no store.redis",
        ),
        (
            "configmap.yaml",
            "redis = \"redis://tokenproxy-redis:6379/0\"",
            "redis = \"redis://redis:6379/0\"",
            "names redis, which is no Service",
        ),
        (
            "configmap.yaml",
            "redis = \"redis://tokenproxy-redis:6379/0\"",
            "redis = \"redis://tokenproxy-redis:6380/0\"",
            "has no port 6380",
        ),
        (
            "configmap.yaml",
            "${file:/run/secrets/tokenproxy/encryption_key}",
            "${file:/run/secrets/encryption_key}",
            "/run/secrets/encryption_key, which is no key",
        ),
        (
            "configmap.yaml",
            "${file:/run/secrets/tokenproxy/redis_password}",
            "${file:/run/secrets/tokenproxy/amm_password}",
            "the sidecars' store.redis_password from secret tokenproxy-fleet-secrets amm_password",
        ),
        (
            "configmap.yaml",
            "${file:/run/secrets/tokenproxy/redis_password}",
            "hunter2",
            "store.redis_password is not a ${file:...}",
        ),
        (
            "redis.yaml",
            "- \"--appendonly\"\n            - \"yes\"",
            "- \"--appendonly\"\n            - \"no\"",
            "--appendonly yes",
        ),
        (
            "redis.yaml",
            "\"$(REDIS_PASSWORD)\"",
            "\"hunter2\"",
            "--requirepass is not $(VAR)",
        ),
        (
            "redis.yaml",
            "key: redis_password",
            "key: amm_password",
            "--requirepass comes from secret tokenproxy-fleet-secrets amm_password",
        ),
        (
            "redis.yaml",
            "mountPath: /data",
            "mountPath: /var/data",
            "not on a PersistentVolumeClaim",
        ),
        (
            "redis.yaml",
            "volumeClaimTemplates:\n    - metadata:\n        name: data",
            "volumeClaimTemplates:\n    - metadata:\n        name: other",
            "not on a PersistentVolumeClaim",
        ),
        (
            "redis.yaml",
            "readinessProbe:",
            "startupProbe:",
            "no readinessProbe",
        ),
        (
            "redis.yaml",
            "image: redis:7.2",
            "image: memcached:1.6",
            "expected one Redis",
        ),
        (
            "redis.yaml",
            "  selector:\n    app.kubernetes.io/name: tokenproxy-redis",
            "  selector:\n    app.kubernetes.io/name: other",
            "does not select the Redis pods",
        ),
        (
            "redis.yaml",
            "targetPort: redis",
            "targetPort: 6380",
            "leads to no port",
        ),
        (
            "secret.yaml",
            "  encryption_key: \"REPLACE-ME\"",
            "",
            "/run/secrets/tokenproxy/encryption_key, which is no key",
        ),
        (
            "deployment.yaml",
            "replicas: 3",
            "replicas: 1",
            "replicas: 1, no fleet",
        ),
        (
            "deployment.yaml",
            "secretName: tokenproxy-fleet-secrets",
            "secretName: tokenproxy-secrets",
            "no key of a Secret",
        ),
    ];
    for (file, needle, replacement, expected) in cases {
        let text = repo_file(&format!("{KUBERNETES_FLEET}/{file}"));
        let check =
            |text: &str| fleet_problems(&kubernetes_files_with(KUBERNETES_FLEET, file, text));
        assert_caught(&text, needle, replacement, check, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// systemd user unit

/// `key=value` settings of one `[section]` of a unit file, in order.
fn unit_section<'a>(text: &'a str, section: &str) -> Vec<(&'a str, &'a str)> {
    let header = format!("[{section}]");
    let mut inside = false;
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
        } else if inside && !line.starts_with('#') && !line.starts_with(';') {
            if let Some((key, value)) = line.split_once('=') {
                settings.push((key.trim(), value.trim()));
            }
        }
    }
    settings
}

fn systemd_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let service = unit_section(text, "Service");
    let get = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    let exec_start = get("ExecStart");
    let words: Vec<&str> = exec_start
        .first()
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default();
    if exec_start.len() != 1
        || !words.first().is_some_and(|w| w.ends_with("/tokenproxy"))
        || words.get(1) != Some(&"run")
    {
        problems.push(format!(
            "ExecStart is not `…/tokenproxy run`: {exec_start:?}"
        ));
    }
    if get("ExecReload") != ["/bin/kill -HUP $MAINPID"] {
        problems.push("ExecReload does not send SIGHUP to $MAINPID".into());
    }
    for (key, value) in [
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
    ] {
        if get(key) != [value] {
            problems.push(format!("{key} is not {value}"));
        }
    }
    let stop = get("TimeoutStopSec")
        .first()
        .and_then(|v| v.parse::<u64>().ok());
    if stop.is_none_or(|seconds| seconds <= 10) {
        problems.push("TimeoutStopSec is not longer than the default drain_timeout (10 s)".into());
    }
    if !unit_section(text, "Install").contains(&("WantedBy", "default.target")) {
        problems.push("not WantedBy=default.target (the target of a user manager)".into());
    }
    if text.contains("User=") {
        problems.push("User= in a user unit".into());
    }
    problems
}

#[test]
fn shipped_systemd_unit_is_complete() {
    assert_clean(
        "systemd unit",
        systemd_problems(&repo_file("examples/systemd/tokenproxy.service")),
    );
}

#[test]
fn catches_systemd_mistakes() {
    let text = repo_file("examples/systemd/tokenproxy.service");
    let check = systemd_problems;
    assert_caught(
        &text,
        "tokenproxy run",
        "tokenproxy demo",
        check,
        "ExecStart",
    );
    assert_caught(&text, "-HUP", "-TERM", check, "ExecReload");
    assert_caught(
        &text,
        "KillSignal=SIGTERM",
        "KillSignal=SIGKILL",
        check,
        "KillSignal",
    );
    assert_caught(
        &text,
        "Restart=on-failure",
        "Restart=no",
        check,
        "Restart is not",
    );
    assert_caught(
        &text,
        "NoNewPrivileges=yes",
        "NoNewPrivileges=no",
        check,
        "NoNewPrivileges",
    );
    assert_caught(
        &text,
        "TimeoutStopSec=15",
        "TimeoutStopSec=5",
        check,
        "TimeoutStopSec",
    );
    assert_caught(
        &text,
        "WantedBy=default.target",
        "WantedBy=multi-user.target",
        check,
        "default.target",
    );
}

// ---------------------------------------------------------------------------------------------
// launchd plist

/// Checks the plist is well-formed enough for launchd (comments legal, tags balanced) and
/// returns its top-level `<key>`s with the text of their values.
fn plist_entries(text: &str) -> Result<Vec<(String, String)>, String> {
    // Comments: "--" is not allowed inside one.
    let mut body = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        body.push_str(&rest[..start]);
        let after = &rest[start + 4..];
        let end = after.find("-->").ok_or("an unterminated comment")?;
        if after[..end].contains("--") {
            return Err("a comment contains \"--\", which XML forbids".into());
        }
        rest = &after[end + 3..];
    }
    body.push_str(rest);
    // Tags balance.
    let mut stack: Vec<String> = Vec::new();
    let mut entries = Vec::new();
    let mut pending_key: Option<String> = None;
    let mut value_start: Option<usize> = None;
    let mut position = 0;
    while let Some(open) = body[position..].find('<') {
        let open = position + open;
        let close = open + body[open..].find('>').ok_or("an unterminated tag")?;
        let tag = &body[open + 1..close];
        position = close + 1;
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        let depth = stack.len();
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name) {
                return Err(format!("</{name}> closes nothing open"));
            }
            if name == "key" && depth == 3 {
                let key_open = body[..open].rfind("<key>").unwrap() + "<key>".len();
                pending_key = Some(body[key_open..open].to_owned());
            } else if depth == 3 {
                if let (Some(key), Some(start)) = (pending_key.take(), value_start.take()) {
                    entries.push((key, body[start..position].to_owned()));
                }
            }
        } else {
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            if depth == 2 && name != "key" {
                value_start = Some(open);
            }
            if tag.ends_with('/') {
                if depth == 2 && name != "key" {
                    if let Some(key) = pending_key.take() {
                        entries.push((key, tag.to_owned()));
                    }
                }
            } else {
                stack.push(name);
            }
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed tags: {stack:?}"));
    }
    Ok(entries)
}

fn launchd_problems(text: &str) -> Vec<String> {
    let entries = match plist_entries(text) {
        Ok(entries) => entries,
        Err(e) => return vec![format!("not a well-formed plist: {e}")],
    };
    let mut problems = Vec::new();
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let strings = |value: &str| -> Vec<String> {
        value
            .split("<string>")
            .skip(1)
            .filter_map(|s| s.split_once("</string>").map(|(s, _)| s.to_owned()))
            .collect()
    };
    let arguments = get("ProgramArguments").map(strings).unwrap_or_default();
    if !arguments
        .first()
        .is_some_and(|a| a.starts_with('/') && a.ends_with("/tokenproxy"))
        || arguments.get(1).map(String::as_str) != Some("run")
    {
        problems.push(format!(
            "ProgramArguments is not [/…/tokenproxy, run]: {arguments:?}"
        ));
    }
    if get("Label") != Some("<string>com.tokenproxy</string>") {
        problems.push("Label is not com.tokenproxy".into());
    }
    if get("RunAtLoad") != Some("true/") {
        problems.push("RunAtLoad is not true".into());
    }
    if get("KeepAlive").is_none() {
        problems.push("no KeepAlive".into());
    }
    for key in ["StandardOutPath", "StandardErrorPath"] {
        let path = get(key).map(strings).unwrap_or_default();
        if !path
            .first()
            .is_some_and(|p| p.ends_with("/Library/Logs/tokenproxy.log"))
        {
            problems.push(format!(
                "{key} is not ~/Library/Logs/tokenproxy.log: {path:?}"
            ));
        }
    }
    problems
}

#[test]
fn shipped_launchd_plist_is_complete() {
    assert_clean(
        "launchd plist",
        launchd_problems(&repo_file("examples/launchd/com.tokenproxy.plist")),
    );
}

#[test]
fn catches_launchd_mistakes() {
    let text = repo_file("examples/launchd/com.tokenproxy.plist");
    let check = launchd_problems;
    assert_caught(
        &text,
        "<string>run</string>",
        "<string>demo</string>",
        check,
        "ProgramArguments",
    );
    assert_caught(
        &text,
        "<key>RunAtLoad</key>\n    <true/>",
        "<key>RunAtLoad</key>\n    <false/>",
        check,
        "RunAtLoad",
    );
    assert_caught(
        &text,
        "<key>KeepAlive</key>",
        "<key>KeepItAlive</key>",
        check,
        "no KeepAlive",
    );
    assert_caught(
        &text,
        "Logs/tokenproxy.log</string>",
        "Logs/other.log</string>",
        check,
        "StandardOutPath",
    );
    assert_caught(&text, "</array>", "", check, "not a well-formed plist");
    assert_caught(&text, "Install:", "Install -- now:", check, "\"--\"");
}

// ---------------------------------------------------------------------------------------------
// Postman

/// Each request, and what its test must expect of a vendor's answer: the vendor's own data,
/// which it only gives with a valid token.
const POSTMAN_PATHS: [(&str, Option<&str>); 6] = [
    (
        "biganimal/clusters",
        Some("pm.expect(body.data[0].clusterName).to.be.a(\"string\");"),
    ),
    (
        "bigid/api/v1/ds-connections",
        Some("pm.expect(body.data.ds_connections[0].type).to.be.a(\"string\");"),
    ),
    (
        "bigeval/api/v1/testcases",
        Some("pm.expect(body.items[0].testType).to.be.a(\"string\");"),
    ),
    (
        "caepe/api/v1/applications",
        Some("pm.expect(body.organization).to.equal(\"acme\");"),
    ),
    (
        "amm/api/v1/systems",
        Some("pm.expect(body.items[0].gateway.imei).to.be.a(\"string\");"),
    ),
    ("-/status", None),
];

fn json_has_key(value: &serde_json::Value, key: &str) -> bool {
    match value {
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k == key || json_has_key(v, key)),
        serde_json::Value::Array(items) => items.iter().any(|v| json_has_key(v, key)),
        _ => false,
    }
}

fn postman_problems(collection: &str, environment: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let collection: serde_json::Value = match serde_json::from_str(collection) {
        Ok(value) => value,
        Err(e) => return vec![format!("collection: not JSON: {e}")],
    };
    let environment: serde_json::Value = match serde_json::from_str(environment) {
        Ok(value) => value,
        Err(e) => return vec![format!("environment: not JSON: {e}")],
    };
    let schema = collection["info"]["schema"].as_str().unwrap_or_default();
    if !schema.contains("/collection/v2.1.0/") {
        problems.push(format!("collection: schema is not v2.1.0: {schema:?}"));
    }
    if json_has_key(&collection, "auth") {
        problems.push("collection: has auth settings (tokenproxy adds the token)".into());
    }
    let items = collection["item"].as_array().cloned().unwrap_or_default();
    for (path, vendor_data) in POSTMAN_PATHS {
        let raw = format!("{{{{baseUrl}}}}/{path}");
        let Some(item) = items
            .iter()
            .find(|item| item["request"]["url"]["raw"].as_str() == Some(&raw))
        else {
            problems.push(format!("collection: no request for {raw}"));
            continue;
        };
        let script: String = item["event"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|event| event["listen"] == "test")
            .flat_map(|event| {
                event["script"]["exec"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|line| line.as_str().map(str::to_owned))
            .collect::<Vec<_>>()
            .join("\n");
        if !script.contains("pm.response.to.have.status(200)") {
            problems.push(format!("collection: {raw} does not test for status 200"));
        }
        if let Some(expected) = vendor_data.filter(|expected| !script.contains(expected)) {
            problems.push(format!(
                "collection: {raw} does not test the vendor's data: {expected}"
            ));
        }
    }
    let base_url = |values: &serde_json::Value| {
        values
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["key"] == "baseUrl")
            .and_then(|v| v["value"].as_str().map(str::to_owned))
    };
    if base_url(&environment["values"]).as_deref() != Some("http://127.0.0.1:8080") {
        problems.push("environment: baseUrl is not http://127.0.0.1:8080".into());
    }
    if base_url(&collection["variable"]).is_none() {
        problems.push("collection: no baseUrl variable".into());
    }
    problems
}

#[test]
fn shipped_postman_collection_has_no_auth_and_tests_every_vendor() {
    assert_clean(
        "postman",
        postman_problems(
            &repo_file("examples/postman/tokenproxy.postman_collection.json"),
            &repo_file("examples/postman/tokenproxy.postman_environment.json"),
        ),
    );
}

#[test]
fn catches_postman_mistakes() {
    let collection = repo_file("examples/postman/tokenproxy.postman_collection.json");
    let environment = repo_file("examples/postman/tokenproxy.postman_environment.json");
    let check = |text: &str| postman_problems(text, &environment);
    assert_caught(
        &collection,
        "\"request\": {",
        "\"request\": {\"auth\": {\"type\": \"bearer\"},",
        check,
        "auth settings",
    );
    assert_caught(
        &collection,
        "{{baseUrl}}/amm/api/v1/systems\"",
        "{{baseUrl}}/amm/api/v2/systems\"",
        check,
        "no request for {{baseUrl}}/amm/api/v1/systems",
    );
    assert_caught(
        &collection,
        r#"pm.expect(body.items[0].testType).to.be.a(\"string\");"#,
        "",
        check,
        "does not test the vendor's data",
    );
    assert_caught(
        &collection,
        "pm.response.to.have.status(200);",
        "",
        check,
        "status 200",
    );
    assert_caught(&collection, "v2.1.0", "v2.0.0", check, "schema");
    assert_caught(
        &collection,
        "\"key\": \"baseUrl\"",
        "\"key\": \"base\"",
        check,
        "no baseUrl variable",
    );
    let check = |text: &str| postman_problems(&collection, text);
    assert_caught(
        &environment,
        "http://127.0.0.1:8080",
        "http://127.0.0.1:9090",
        check,
        "environment: baseUrl",
    );
}
