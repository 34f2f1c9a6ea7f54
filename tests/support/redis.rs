//! A real `redis-server` (Debian's package) on a free loopback port, in a directory of its
//! own, stopped when dropped. Append-only persistence, so a restart keeps the fleet's keys
//! as a production Redis with AOF does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    secure: Option<Secure>,
}

/// TLS (server certificate and key, the CA that signed it, PEM files) and a password.
pub struct Secure {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub password: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> String {
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "/usr/bin/redis-server".into());
    assert!(
        std::path::Path::new(&binary).exists(),
        "redis-server is needed at {binary} (bash scripts/test.sh installs Debian's redis-server)"
    );
    binary
}

impl Redis {
    pub async fn start(name: &str) -> Redis {
        Redis::start_with(name, None).await
    }

    /// Only TLS (`rediss://`) with `AUTH`; plain connections are not served.
    pub async fn start_secure(name: &str, secure: Secure) -> Redis {
        Redis::start_with(name, Some(secure)).await
    }

    async fn start_with(name: &str, secure: Option<Secure>) -> Redis {
        let dir = super::temp_dir(&format!("redis-{name}"));
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir,
            secure,
        };
        redis.launch().await;
        redis
    }

    pub fn url(&self) -> String {
        match self.secure {
            Some(_) => format!("rediss://127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn secure_args(&self) -> (Vec<String>, Vec<String>) {
        let Some(secure) = &self.secure else {
            return (vec!["--port".into(), self.port.to_string()], Vec::new());
        };
        let path = |path: &PathBuf| path.display().to_string();
        let server = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            self.port.to_string(),
            "--tls-cert-file".into(),
            path(&secure.cert),
            "--tls-key-file".into(),
            path(&secure.key),
            "--tls-ca-cert-file".into(),
            path(&secure.ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            secure.password.clone(),
        ];
        let cli = vec![
            "--tls".into(),
            "--cacert".into(),
            path(&secure.ca),
            "-a".into(),
            secure.password.clone(),
            "--no-auth-warning".into(),
        ];
        (server, cli)
    }

    async fn launch(&mut self) {
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1"])
            .args(self.secure_args().0)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it at once, as a crash would (its AOF has every write).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// A command through `redis-cli` (Debian's redis-tools), its output trimmed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.secure_args().1)
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Every key and its whole value, as text.
    pub fn dump(&self) -> String {
        let keys = self.cli(&["--scan"]).unwrap_or_default();
        let mut text = String::new();
        for key in keys.lines() {
            let kind = self.cli(&["TYPE", key]).unwrap_or_default();
            let value = match kind.as_str() {
                "hash" => self.cli(&["HGETALL", key]),
                "string" => self.cli(&["GET", key]),
                other => Some(format!("({other})")),
            };
            text.push_str(&format!("{key} = {}\n", value.unwrap_or_default()));
        }
        text
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
