//! Name resolution with an optional per-upstream override: the upstream's target host
//! goes to a configured IP (curl's `--resolve`), for split-DNS networks and for tests;
//! every other name (token endpoints included) is resolved by the system as usual. The
//! port stays the target's, and TLS still checks the certificate against the host name.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower::Service;

/// One host name answered with a fixed address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddressOverride {
    pub host: String,
    pub ip: IpAddr,
}

#[derive(Clone)]
pub struct Resolve {
    fixed: Option<AddressOverride>,
    system: GaiResolver,
}

impl Resolve {
    pub fn new(fixed: Option<AddressOverride>) -> Self {
        Resolve {
            fixed,
            system: GaiResolver::new(),
        }
    }
}

type Addresses = std::vec::IntoIter<SocketAddr>;

impl Service<Name> for Resolve {
    type Response = Addresses;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addresses, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.system.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some(fixed) = self
            .fixed
            .as_ref()
            .filter(|fixed| fixed.host.eq_ignore_ascii_case(name.as_str()))
        {
            // Port 0: the connector puts the URL's port in.
            let address = SocketAddr::new(fixed.ip, 0);
            return Box::pin(std::future::ready(Ok(vec![address].into_iter())));
        }
        let lookup = self.system.call(name);
        Box::pin(async move {
            let addresses = lookup.await?;
            Ok(addresses.collect::<Vec<_>>().into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[tokio::test]
    async fn only_the_overridden_host_is_answered_with_the_fixed_address() {
        let mut resolve = Resolve::new(Some(AddressOverride {
            host: "bigeval.example".into(),
            ip: "127.0.0.7".parse().unwrap(),
        }));
        let fixed: Vec<SocketAddr> = resolve
            .call(Name::from_str("BigEval.Example").unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(fixed, ["127.0.0.7:0".parse().unwrap()]);
        let system: Vec<SocketAddr> = resolve
            .call(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(
            system.iter().all(|address| address.ip().is_loopback()),
            "{system:?}"
        );
        assert!(!system.contains(&"127.0.0.7:0".parse().unwrap()));
    }
}
