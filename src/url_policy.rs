//! Which URLs a resolver may fetch.
//!
//! A pointer is a URL chosen by the peer, so fetching it blindly would let a peer point a
//! client or server at its own network (cloud metadata services, admin ports). The policy is
//! checked on the first URL, on every redirect hop, and on every address a host name resolves
//! to (through [`PolicyResolver`]), so DNS cannot be used to sneak past it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::Url;

use crate::error::{Error, Result};

/// The rules for fetchable URLs. The default is strict: https only, public addresses only.
///
/// ```
/// use spillway::url_policy::UrlPolicy;
/// let strict = UrlPolicy::default();
/// assert!(strict.check(&"https://bucket.s3.amazonaws.com/k".parse().unwrap()).is_ok());
/// assert!(strict.check(&"http://bucket.s3.amazonaws.com/k".parse().unwrap()).is_err());
/// assert!(strict.check(&"https://169.254.169.254/latest".parse().unwrap()).is_err());
/// let local = UrlPolicy::local_testing();
/// assert!(local.check(&"http://127.0.0.1:9000/k".parse().unwrap()).is_ok());
/// assert!(local.check(&"http://169.254.169.254/".parse().unwrap()).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Allow plain `http`.
    pub allow_http: bool,
    /// Allow loopback addresses (127.0.0.0/8, ::1).
    pub allow_loopback: bool,
    /// Allow private networks: 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT), fc00::/7.
    pub allow_private_networks: bool,
    /// Origins (`scheme://host:port`) always allowed, whatever the rules above say: the RPC
    /// server a client already talks to is one.
    pub trusted_origins: Vec<String>,
}

impl UrlPolicy {
    /// For tests and single-machine setups: http and loopback allowed; link-local and
    /// metadata addresses still refused.
    pub fn local_testing() -> Self {
        UrlPolicy {
            allow_http: true,
            allow_loopback: true,
            ..Default::default()
        }
    }

    /// Adds a trusted origin (the scheme, host and port of `url`).
    pub fn trust_origin_of(mut self, url: &Url) -> Self {
        self.trusted_origins
            .push(url.origin().ascii_serialization());
        self
    }

    fn is_trusted(&self, url: &Url) -> bool {
        let origin = url.origin().ascii_serialization();
        self.trusted_origins.contains(&origin)
    }

    /// Checks a URL's scheme and, when its host is an IP literal, the address.
    pub fn check(&self, url: &Url) -> Result<()> {
        let reject = |reason: String| {
            Err(Error::UrlRejected {
                url: spillway_storage::redact_url(url.as_str()),
                reason,
            })
        };
        if !url.username().is_empty() || url.password().is_some() {
            return reject("credentials in urls are not allowed".into());
        }
        if self.is_trusted(url) {
            return Ok(());
        }
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return reject("plain http is not allowed (https only)".into()),
            other => return reject(format!("scheme {other:?} is not allowed")),
        }
        match url.host() {
            None => reject("url has no host".into()),
            Some(url::Host::Ipv4(ip)) => self.check_ip_for(url, IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip_for(url, IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if !self.allow_loopback && (d == "localhost" || d.ends_with(".localhost")) {
                    return reject("loopback host names are not allowed".into());
                }
                Ok(())
            }
        }
    }

    fn check_ip_for(&self, url: &Url, ip: IpAddr) -> Result<()> {
        match self.ip_refusal(ip) {
            None => Ok(()),
            Some(why) => Err(Error::UrlRejected {
                url: spillway_storage::redact_url(url.as_str()),
                reason: format!("address {ip} is {why}"),
            }),
        }
    }

    /// Why an address may not be contacted, or `None` if it may.
    pub fn ip_refusal(&self, ip: IpAddr) -> Option<&'static str> {
        match classify_ip(ip) {
            AddrClass::Public => None,
            AddrClass::Loopback if self.allow_loopback => None,
            AddrClass::Private if self.allow_private_networks => None,
            AddrClass::Loopback => Some("a loopback address"),
            AddrClass::Private => Some("a private-network address"),
            AddrClass::LinkLocal => Some("a link-local or metadata-service address"),
            AddrClass::Special => Some("a reserved, multicast or unspecified address"),
        }
    }

    /// Host names whose resolved addresses are not filtered (hosts of trusted origins).
    fn trusted_hosts(&self) -> Vec<String> {
        self.trusted_origins
            .iter()
            .filter_map(|o| Url::parse(o).ok())
            .filter_map(|u| u.host_str().map(str::to_ascii_lowercase))
            .collect()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum AddrClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    Special,
}

fn classify_ip(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let o = ip.octets();
    if ip.is_loopback() {
        AddrClass::Loopback
    } else if ip.is_link_local() {
        AddrClass::LinkLocal
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        AddrClass::Private
    } else if ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        || o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        AddrClass::Special
    } else {
        AddrClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) embeds an IPv4 address that the gateway will reach.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    if ip.is_loopback() {
        AddrClass::Loopback
    } else if (s[0] & 0xffc0) == 0xfe80 {
        AddrClass::LinkLocal
    } else if (s[0] & 0xfe00) == 0xfc00 {
        AddrClass::Private
    } else if ip.is_unspecified() || ip.is_multicast() || s[0] == 0 {
        AddrClass::Special
    } else {
        AddrClass::Public
    }
}

/// A refusal by the URL policy inside the HTTP stack (a host name resolving only to forbidden
/// addresses), where only a boxed `std::error::Error` can travel. [`crate::Error`] finds it in
/// a reqwest error's source chain and reports [`crate::Error::UrlRejected`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("URL rejected: {0}")]
pub struct PolicyRefusal(pub String);

/// A DNS resolver for reqwest that drops addresses the policy forbids, so a host name that
/// resolves to, say, 169.254.169.254 cannot be fetched.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<UrlPolicy>,
    trusted_hosts: Arc<Vec<String>>,
}

impl PolicyResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<UrlPolicy>) -> Self {
        let trusted_hosts = Arc::new(policy.trusted_hosts());
        PolicyResolver {
            policy,
            trusted_hosts,
        }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_ascii_lowercase();
        let trusted = self.trusted_hosts.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| trusted || policy.ip_refusal(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let why = addrs
                    .first()
                    .and_then(|a| policy.ip_refusal(a.ip()))
                    .unwrap_or("unresolvable");
                return Err(PolicyRefusal(format!("host {host} resolves to {why}")).into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn strict_policy_refuses_internal_addresses() {
        let p = UrlPolicy::default();
        for bad in [
            "http://example.com/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://172.20.0.1/x",
            "https://192.168.1.1/x",
            "https://100.64.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[fe80::1]/x",
            "https://[fd00:ec2::254]/x",
            "https://[::ffff:169.254.169.254]/x",
            "https://[64:ff9b::a9fe:a9fe]/x",
            "https://0.0.0.0/x",
            "https://localhost/x",
            "ftp://example.com/x",
            "https://user:pw@example.com/x",
        ] {
            let e = p.check(&u(bad)).expect_err(bad);
            assert!(e.to_string().contains("URL rejected"), "{e}");
            assert!(!e.to_string().contains("pw"), "{e}");
        }
        for good in [
            "https://example.com/x",
            "https://8.8.8.8/x",
            "https://[2001:db8::1]/x",
        ] {
            p.check(&u(good)).expect(good);
        }
    }

    #[test]
    fn local_testing_allows_loopback_only() {
        let p = UrlPolicy::local_testing();
        p.check(&u("http://127.0.0.1:1234/x")).unwrap();
        p.check(&u("http://localhost:1234/x")).unwrap();
        assert!(p.check(&u("http://10.0.0.1/x")).is_err());
        assert!(p.check(&u("http://169.254.169.254/x")).is_err());
    }

    #[tokio::test]
    async fn resolver_drops_forbidden_addresses() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = || reqwest::dns::Name::from_str("localhost").unwrap();
        // A host name that resolves to loopback is refused by the strict policy...
        let strict = PolicyResolver::new(Arc::new(UrlPolicy::default()));
        let err = match strict.resolve(name()).await {
            Ok(_) => panic!("localhost resolved under the strict policy"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("URL rejected"), "{err}");
        assert_eq!(
            err,
            "URL rejected: host localhost resolves to a loopback address"
        );
        // ... and allowed when loopback is, with only allowed addresses returned.
        let local = PolicyResolver::new(Arc::new(UrlPolicy::local_testing()));
        let addrs: Vec<SocketAddr> = local.resolve(name()).await.unwrap().collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn trusted_origin_is_exact() {
        let p = UrlPolicy::default().trust_origin_of(&u("http://127.0.0.1:8080/vgi"));
        p.check(&u("http://127.0.0.1:8080/__storage__/k?sig=1"))
            .unwrap();
        assert!(p.check(&u("http://127.0.0.1:8081/k")).is_err());
        assert!(p.check(&u("https://127.0.0.1:8080/k")).is_err());
    }
}
