//! Fleet mode: the token state of every replica in one Redis (or Valkey), so many
//! tokenproxies share one vendor credential with exactly one refresher per upstream.
//!
//! Keys, under the configured prefix `P` (one fleet per prefix), per upstream `U`:
//! - `P token:U`, a hash: `version` (bumped by every write), `fence` (the lease generation
//!   of the writer), `sealed` (the sealed token set; empty after a logout), `writer`.
//! - `P lease:U`: `"<generation> <replica>"`, set if absent with an expiry and renewed by its
//!   holder. The generation comes from `P fence:U`, bumped at every new holder.
//! - Channel `P events`: `changed U <version>` after every write, `wanted U <version>` when a
//!   replica needs the holder to replace a token the vendor refused.
//!
//! A write is a compare-and-set in one server-side script: it lands only if the entry is
//! still at the version the writer read (its refresh token is the newest) and no writer of
//! a newer lease generation has written since. A replica whose lease lapsed can never put
//! an older refresh token over a newer one.
//!
//! Commands and the subscription share one RESP3 connection (redis-rs's connection
//! manager), which reconnects and resubscribes by itself.

pub mod seal;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};
use tokio::sync::{broadcast, mpsc};

use crate::secret::Secret;
use seal::{OpenError, SealKey, Sealer};

/// `[store]` with `redis`, validated.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// `redis://` or `rediss://` URL; it may hold a password.
    pub url: Secret,
    /// The Redis password (`AUTH`), if not in the URL.
    pub password: Option<Secret>,
    /// `rediss://`: trust these CA certificates (PEM) instead of the system's.
    pub ca_file: Option<std::path::PathBuf>,
    pub key_prefix: String,
    /// The first seals; all open (rotation).
    pub encryption_keys: Vec<Secret>,
    pub lease_ttl: Duration,
    /// How often a replica re-reads the entries, in case a message was lost.
    pub reread_interval: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis entry of {upstream}: {source}")]
    Open {
        upstream: String,
        #[source]
        source: OpenError,
    },
}

impl From<redis::RedisError> for FleetError {
    fn from(error: redis::RedisError) -> Self {
        // redis-rs errors name the command and the server's words, never the URL.
        FleetError::Redis(error.to_string())
    }
}

/// What Redis holds for one upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub version: u64,
    pub fence: u64,
    /// `None`: nothing stored, or logged out.
    pub sealed: Option<String>,
    pub writer: String,
    /// The holder's last token request for this version failed.
    pub failure: Option<Failure>,
}

/// Why the holder could not refresh the entry's token, sealed like the token, and until
/// when nobody should ask again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failure {
    /// The entry version the failed refresh started from.
    pub version: u64,
    pub sealed_reason: String,
    pub retry_at_unix: f64,
    pub holder: String,
}

/// What a replica does for an upstream while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenRedisDown {
    /// Serve the held token until it expires, then 503: for rotating refresh tokens and
    /// logins, where a token fetched alone would fork the chain.
    KeepHeldToken,
    /// Get a token alone with the kind's own grant (client credentials, password, token
    /// exchange): tokens independent of each other.
    FetchLocally,
}

impl WhenRedisDown {
    pub fn parse(text: &str) -> Option<WhenRedisDown> {
        match text {
            "keep_held_token" => Some(WhenRedisDown::KeepHeldToken),
            "fetch_locally" => Some(WhenRedisDown::FetchLocally),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            WhenRedisDown::KeepHeldToken => "keep_held_token",
            WhenRedisDown::FetchLocally => "fetch_locally",
        }
    }
}

/// Who holds an upstream's lease, as the last acquire or renewal saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub generation: u64,
    /// This replica holds it.
    pub mine: bool,
    /// This call made this replica the holder.
    pub acquired: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Written {
    /// Stored as this version.
    Stored(u64),
    /// Someone wrote first (the entry is at this version), or a newer lease holder has.
    Superseded(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Changed {
        upstream: String,
        version: u64,
    },
    Wanted {
        upstream: String,
        version: u64,
    },
    /// The holder's refresh from `version` failed (the entry says why).
    Failed {
        upstream: String,
        version: u64,
    },
    /// The connection came back: messages may have been lost meanwhile.
    Reconnected,
}

/// Counters for `/-/metrics`.
#[derive(Debug, Default)]
pub struct FleetMetrics {
    pub redis_errors: AtomicU64,
}

pub struct Fleet {
    redis: ConnectionManager,
    prefix: String,
    sealer: Sealer,
    /// `hostname/pid`: what status shows as a lease holder.
    pub replica: String,
    pub lease_ttl: Duration,
    pub reread_interval: Duration,
    events: broadcast::Sender<Event>,
    reachable: AtomicBool,
    pub metrics: FleetMetrics,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// Acquires the lease if it is free, renews it if it is ours.
/// KEYS: lease, fence counter. ARGV: replica, ttl ms. Returns {state, generation, holder}:
/// 0 held by another, 1 renewed, 2 acquired.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = redis.call('GET', KEYS[1])
if held then
  local space = string.find(held, ' ', 1, true)
  local generation = tonumber(string.sub(held, 1, space - 1))
  local holder = string.sub(held, space + 1)
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, generation, holder}
  end
  return {0, generation, holder}
end
local generation = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], generation .. ' ' .. ARGV[1], 'PX', ARGV[2])
return {2, generation, ARGV[1]}
"#,
    )
});

/// Lets go of the lease if it is ours (a clean shutdown hands over at once).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, string.find(held, ' ', 1, true) + 1) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// The compare-and-set write of a refreshed token set.
/// KEYS: token. ARGV: expected version, writer's lease generation, sealed, replica, channel,
/// upstream. Returns {1, new version} or {0, current version}.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if version ~= tonumber(ARGV[1]) or fence > tonumber(ARGV[2]) then
  return {0, version}
end
version = version + 1
redis.call('HSET', KEYS[1], 'version', version, 'fence', ARGV[2], 'sealed', ARGV[3], 'writer', ARGV[4])
redis.call('HDEL', KEYS[1], 'failed_version', 'failure', 'retry_at', 'failed_by')
redis.call('PUBLISH', ARGV[5], 'changed ' .. ARGV[6] .. ' ' .. version)
return {1, version}
"#,
    )
});

/// Puts back what Redis lost: a replica whose token came from a version newer than the
/// entry's (Redis restarted empty, or a failover lost writes) writes it again, above every
/// version any replica has seen, so they all take it. Compare-and-set on the entry's version.
/// KEYS: token. ARGV: expected version, new version, sealed, replica, channel, upstream.
/// Returns {1, new version} or {0, current version}.
static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then
  return {0, version}
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'sealed', ARGV[3], 'writer', ARGV[4])
redis.call('HDEL', KEYS[1], 'failed_version', 'failure', 'retry_at', 'failed_by')
redis.call('PUBLISH', ARGV[5], 'changed ' .. ARGV[6] .. ' ' .. ARGV[2])
return {1, tonumber(ARGV[2])}
"#,
    )
});

/// A login's or a logout's write: whatever was there, this is the newest. Keeps the fence.
/// KEYS: token. ARGV: sealed ('' for a logout), replica, channel, upstream. Returns the version.
static OVERWRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') + 1
redis.call('HSET', KEYS[1], 'version', version, 'sealed', ARGV[1], 'writer', ARGV[2])
redis.call('HDEL', KEYS[1], 'failed_version', 'failure', 'retry_at', 'failed_by')
redis.call('PUBLISH', ARGV[3], 'changed ' .. ARGV[4] .. ' ' .. version)
return version
"#,
    )
});

/// The holder's failed refresh, for the replicas waiting on it. Leaves the token as it is.
/// KEYS: token. ARGV: version, sealed reason, retry-at (Unix seconds), replica, channel,
/// upstream.
static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSET', KEYS[1], 'failed_version', ARGV[1], 'failure', ARGV[2], 'retry_at', ARGV[3], 'failed_by', ARGV[4])
redis.call('PUBLISH', ARGV[5], 'failed ' .. ARGV[6] .. ' ' .. ARGV[1])
return 1
"#,
    )
});

impl Fleet {
    /// Sets up the connection (made lazily: a Redis that is down at start is retried, and
    /// the daemon starts anyway) and the subscription to the fleet's events.
    pub fn connect(settings: &FleetSettings) -> Result<Arc<Fleet>, FleetError> {
        let keys = settings
            .encryption_keys
            .iter()
            .map(SealKey::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(FleetError::Redis)?;
        let info = settings
            .url
            .expose()
            .into_connection_info()
            .map_err(|_| FleetError::Redis("store.redis is not a redis:// URL".into()))?;
        // RESP3: messages arrive on the command connection, which resubscribes on reconnect.
        let mut redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        if let Some(password) = &settings.password {
            redis_settings = redis_settings.set_password(password.expose());
        }
        let info = info.set_redis_settings(redis_settings);
        let client = match &settings.ca_file {
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|error| {
                    FleetError::Redis(format!("store.redis_ca_file {}: {error}", path.display()))
                })?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )?
            }
            None => redis::Client::open(info)?,
        };
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1))
            .set_push_sender(push_tx)
            .set_automatic_resubscription();
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        let (events, _) = broadcast::channel(256);
        let fleet = Arc::new(Fleet {
            redis,
            prefix: settings.key_prefix.clone(),
            sealer: Sealer::new(keys),
            replica: replica_name(),
            lease_ttl: settings.lease_ttl,
            reread_interval: settings.reread_interval,
            events,
            reachable: AtomicBool::new(false),
            metrics: FleetMetrics::default(),
        });
        tokio::spawn(forward_events(Arc::downgrade(&fleet), push_rx));
        tokio::spawn(subscribe(Arc::downgrade(&fleet)));
        Ok(fleet)
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The last command reached Redis.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, upstream: &str) -> String {
        format!("{}{kind}:{upstream}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// Notes whether Redis answered, and counts the errors.
    fn outcome<T>(&self, result: redis::RedisResult<T>) -> Result<T, FleetError> {
        match result {
            Ok(value) => {
                self.reachable.store(true, Ordering::Relaxed);
                Ok(value)
            }
            Err(error) => {
                self.reachable.store(false, Ordering::Relaxed);
                self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                Err(error.into())
            }
        }
    }

    pub async fn read(&self, upstream: &str) -> Result<Entry, FleetError> {
        let mut redis = self.redis.clone();
        let fields: std::collections::HashMap<String, String> = self.outcome(
            redis::cmd("HGETALL")
                .arg(self.key("token", upstream))
                .query_async(&mut redis)
                .await,
        )?;
        let number = |name: &str| fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Entry {
            version: number("version"),
            fence: number("fence"),
            sealed: fields.get("sealed").filter(|s| !s.is_empty()).cloned(),
            writer: fields.get("writer").cloned().unwrap_or_default(),
            failure: fields.get("failure").map(|sealed_reason| Failure {
                version: number("failed_version"),
                sealed_reason: sealed_reason.clone(),
                retry_at_unix: fields
                    .get("retry_at")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0),
                holder: fields.get("failed_by").cloned().unwrap_or_default(),
            }),
        })
    }

    /// Acquires the upstream's lease if it is free, renews it if it is ours.
    pub async fn lease(&self, upstream: &str) -> Result<Lease, FleetError> {
        let mut redis = self.redis.clone();
        let (state, generation, holder): (u8, u64, String) = self.outcome(
            ACQUIRE
                .key(self.key("lease", upstream))
                .key(self.key("fence", upstream))
                .arg(&self.replica)
                .arg(self.lease_ttl.as_millis() as u64)
                .invoke_async(&mut redis)
                .await,
        )?;
        Ok(Lease {
            holder,
            generation,
            mine: state != 0,
            acquired: state == 2,
        })
    }

    pub async fn release(&self, upstream: &str) -> Result<(), FleetError> {
        let mut redis = self.redis.clone();
        let _: u8 = self.outcome(
            RELEASE
                .key(self.key("lease", upstream))
                .arg(&self.replica)
                .invoke_async(&mut redis)
                .await,
        )?;
        Ok(())
    }

    /// Compare-and-set: stores `sealed` if the entry is still at `expected` and no newer
    /// lease generation than `generation` has written.
    pub async fn write(
        &self,
        upstream: &str,
        expected: u64,
        generation: u64,
        sealed: &str,
    ) -> Result<Written, FleetError> {
        self.compare_and_set(&WRITE, upstream, expected, generation, sealed)
            .await
    }

    /// Writes back a token Redis lost, as `version`, if the entry is still at `expected`.
    pub async fn restore(
        &self,
        upstream: &str,
        expected: u64,
        version: u64,
        sealed: &str,
    ) -> Result<Written, FleetError> {
        self.compare_and_set(&RESTORE, upstream, expected, version, sealed)
            .await
    }

    /// `WRITE` and `RESTORE` take the same arguments and answer {stored, version}.
    async fn compare_and_set(
        &self,
        script: &Script,
        upstream: &str,
        expected: u64,
        number: u64,
        sealed: &str,
    ) -> Result<Written, FleetError> {
        let mut redis = self.redis.clone();
        let (stored, version): (u8, u64) = self.outcome(
            script
                .key(self.key("token", upstream))
                .arg(expected)
                .arg(number)
                .arg(sealed)
                .arg(&self.replica)
                .arg(self.channel())
                .arg(upstream)
                .invoke_async(&mut redis)
                .await,
        )?;
        Ok(match stored {
            1 => Written::Stored(version),
            _ => Written::Superseded(version),
        })
    }

    /// A login (`Some`) or a logout (`None`): newer than anything stored.
    pub async fn overwrite(&self, upstream: &str, sealed: Option<&str>) -> Result<u64, FleetError> {
        let mut redis = self.redis.clone();
        self.outcome(
            OVERWRITE
                .key(self.key("token", upstream))
                .arg(sealed.unwrap_or(""))
                .arg(&self.replica)
                .arg(self.channel())
                .arg(upstream)
                .invoke_async(&mut redis)
                .await,
        )
    }

    /// Tells the waiting replicas that the refresh from `version` failed, and why.
    pub async fn fail(
        &self,
        upstream: &str,
        version: u64,
        sealed_reason: &str,
        retry_at_unix: f64,
    ) -> Result<(), FleetError> {
        let mut redis = self.redis.clone();
        let _: u8 = self.outcome(
            FAIL.key(self.key("token", upstream))
                .arg(version)
                .arg(sealed_reason)
                .arg(retry_at_unix)
                .arg(&self.replica)
                .arg(self.channel())
                .arg(upstream)
                .invoke_async(&mut redis)
                .await,
        )?;
        Ok(())
    }

    /// Asks the lease holder to replace the token of `version` (the vendor refused it).
    pub async fn want(&self, upstream: &str, version: u64) -> Result<(), FleetError> {
        let mut redis = self.redis.clone();
        let _: u64 = self.outcome(
            redis::cmd("PUBLISH")
                .arg(self.channel())
                .arg(format!("wanted {upstream} {version}"))
                .query_async(&mut redis)
                .await,
        )?;
        Ok(())
    }

    /// The associated data that binds a value to this fleet, upstream and auth settings.
    fn context(&self, upstream: &str, fingerprint: &str) -> String {
        format!("{}\0{upstream}\0{fingerprint}", self.prefix)
    }

    pub fn seal(&self, plaintext: &[u8], upstream: &str, fingerprint: &str) -> String {
        self.sealer
            .seal(plaintext, &self.context(upstream, fingerprint))
    }

    pub fn open(
        &self,
        sealed: &str,
        upstream: &str,
        fingerprint: &str,
    ) -> Result<Vec<u8>, FleetError> {
        self.sealer
            .open(sealed, &self.context(upstream, fingerprint))
            .map_err(|source| FleetError::Open {
                upstream: upstream.to_owned(),
                source,
            })
    }
}

/// `hostname/pid`; in Kubernetes the hostname is the pod's name. A second fleet member in
/// one process (tests run several servers in one) is `hostname/pid#2`.
fn replica_name() -> String {
    static MEMBERS: AtomicU64 = AtomicU64::new(0);
    let member = MEMBERS.fetch_add(1, Ordering::Relaxed) + 1;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into());
    match member {
        1 => format!("{host}/{}", std::process::id()),
        n => format!("{host}/{}#{n}", std::process::id()),
    }
}

/// Subscribes once Redis answers; the connection manager resubscribes after reconnects.
async fn subscribe(fleet: std::sync::Weak<Fleet>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(fleet) = fleet.upgrade() else { return };
        let mut redis = fleet.redis.clone();
        match redis.subscribe(fleet.channel()).await {
            Ok(()) => {
                fleet.reachable.store(true, Ordering::Relaxed);
                // What was written before we listened is read by the re-read.
                let _ = fleet.events.send(Event::Reconnected);
                return;
            }
            Err(error) => {
                fleet.reachable.store(false, Ordering::Relaxed);
                tracing::warn!(error = %error, "redis: cannot subscribe to the fleet's events yet");
            }
        }
        drop(fleet);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Turns the connection's push messages into events.
async fn forward_events(
    fleet: std::sync::Weak<Fleet>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    while let Some(push) = pushes.recv().await {
        let Some(fleet) = fleet.upgrade() else { return };
        let event = match push.kind {
            PushKind::Message => push.data.last().and_then(parse_event),
            PushKind::Disconnection => {
                fleet.reachable.store(false, Ordering::Relaxed);
                Some(Event::Reconnected)
            }
            PushKind::Subscribe => Some(Event::Reconnected),
            _ => None,
        };
        if let Some(event) = event {
            let _ = fleet.events.send(event);
        }
    }
}

fn parse_event(value: &Value) -> Option<Event> {
    let text = match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?,
        Value::SimpleString(text) => text.as_str(),
        _ => return None,
    };
    let mut words = text.split(' ');
    let (kind, upstream, version) = (words.next()?, words.next()?, words.next()?);
    let upstream = upstream.to_owned();
    let version = version.parse().ok()?;
    match kind {
        "changed" => Some(Event::Changed { upstream, version }),
        "wanted" => Some(Event::Wanted { upstream, version }),
        "failed" => Some(Event::Failed { upstream, version }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_their_messages() {
        let message = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        assert_eq!(
            parse_event(&message("changed amm 7")),
            Some(Event::Changed {
                upstream: "amm".into(),
                version: 7
            })
        );
        assert_eq!(
            parse_event(&message("wanted bigid 3")),
            Some(Event::Wanted {
                upstream: "bigid".into(),
                version: 3
            })
        );
        assert_eq!(
            parse_event(&message("failed amm 4")),
            Some(Event::Failed {
                upstream: "amm".into(),
                version: 4
            })
        );
        assert_eq!(parse_event(&message("changed amm x")), None);
        assert_eq!(parse_event(&message("hello")), None);
    }
}
