//! The SSRF guard of every outgoing HTTP request a job can aim (URL pulls,
//! webhook callbacks): http(s) only; the host resolved once and the
//! connection made to the checked addresses only (the client's DNS is
//! pinned to them, so a second lookup cannot answer differently); loopback,
//! private, link-local (the cloud metadata address among them), CGNAT,
//! unspecified, multicast, broadcast, reserved and documentation addresses
//! refused, IPv4 inside IPv6 (mapped, NAT64, 6to4) judged by its IPv4,
//! unless an allow-listed CIDR holds the address; redirects never followed
//! by the client, but by [`NetGuard::send`] itself, each hop checked again;
//! caps on connect and total time, and no proxy from the environment.

use ipnet::IpNet;
use reqwest::{redirect::Policy, Method, RequestBuilder, Response, StatusCode};
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};
use url::Url;

/// Why an address may not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and IPv6 ULA (`fc00::/7`).
    Private,
    /// `169.254/16` (the cloud metadata address `169.254.169.254` among them), `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT, `100.64/10`.
    SharedCgnat,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`.
    Documentation,
    /// Protocol assignments, benchmarking, `240/4`, site-local, discard,
    /// IPv4-compatible IPv6 and other space no public host lives in.
    Reserved,
}

impl AddressClass {
    /// Short name, as written in refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::SharedCgnat => "shared (CGNAT)",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Documentation => "documentation",
            AddressClass::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class that forbids `ip`, or `None` for a public address.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let o = ip.octets();
    let class = match o {
        [0, ..] => AddressClass::Unspecified,
        [127, ..] => AddressClass::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => AddressClass::Private,
        [169, 254, ..] => AddressClass::LinkLocal,
        [100, 64..=127, ..] => AddressClass::SharedCgnat,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => AddressClass::Documentation,
        [255, 255, 255, 255] => AddressClass::Broadcast,
        [224..=239, ..] => AddressClass::Multicast,
        [192, 0, 0, _] | [198, 18..=19, ..] | [240..=255, ..] => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    if ip.is_unspecified() {
        return Some(AddressClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    let s = ip.segments();
    // IPv4 inside IPv6: judged by the IPv4 it reaches.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return classify_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return classify_v4(embedded(s[1], s[2]));
    }
    let class = match s[0] {
        0 if s[1..6] == [0, 0, 0, 0, 0] => AddressClass::Reserved, // IPv4-compatible (deprecated)
        0x0100 if s[1..4] == [0, 0, 0] => AddressClass::Reserved,  // discard-only
        x if x & 0xfe00 == 0xfc00 => AddressClass::Private,
        x if x & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        x if x & 0xffc0 == 0xfec0 => AddressClass::Reserved, // site-local (deprecated)
        x if x & 0xff00 == 0xff00 => AddressClass::Multicast,
        0x2001 if s[1] == 0x0db8 => AddressClass::Documentation,
        0x3fff if s[1] & 0xf000 == 0 => AddressClass::Documentation,
        x if x & 0xe000 != 0x2000 => AddressClass::Reserved, // outside global unicast 2000::/3
        _ => return None,
    };
    Some(class)
}

/// Why a request was not made or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Not an http(s) URL, or a URL without a host.
    #[error("refused URL {url}: {why}")]
    BadUrl {
        /// The URL, cut short.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The host resolves to an address the guard refuses.
    #[error("refused {host}: it resolves to {addr}, a {class} address (not in the allow-list)")]
    Refused {
        /// The URL's host.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// Why it is refused.
        class: AddressClass,
    },
    /// The host did not resolve.
    #[error("cannot resolve {host}: {why}")]
    Resolve {
        /// The URL's host.
        host: String,
        /// The resolver's answer.
        why: String,
    },
    /// More redirects than allowed.
    #[error("more than {0} redirects")]
    TooManyRedirects(u32),
    /// A redirect without a usable `Location`.
    #[error("redirect {0} without a usable Location")]
    BadRedirect(StatusCode),
    /// The connect or total time cap was reached.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Connecting or talking to the server failed.
    #[error("request failed: {0}")]
    Network(String),
}

impl GuardError {
    /// Whether the guard itself refused (scheme, address, redirects), as
    /// opposed to the server or the network failing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            GuardError::BadUrl { .. }
                | GuardError::Refused { .. }
                | GuardError::TooManyRedirects(_)
                | GuardError::BadRedirect(_)
        )
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        // The chain names the cause (connection refused, reset, TLS) that the top error leaves out.
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        if e.is_timeout() {
            GuardError::Timeout(why)
        } else {
            GuardError::Network(why)
        }
    }
}

/// Limits of the requests a [`NetGuard`] makes.
#[derive(Clone, Debug)]
pub struct GuardLimits {
    /// Networks reachable even though their class is refused (`127.0.0.1/32` in tests).
    pub allow: Vec<IpNet>,
    /// Redirects followed, each checked again; 0 follows none.
    pub max_redirects: u32,
    /// Longest TCP (+ TLS) connect.
    pub connect_timeout: Duration,
    /// Longest whole request, the response body read included.
    pub total_timeout: Duration,
}

/// Parses an allow-list of CIDRs (`10.1.0.0/16`, `::1/128`; a bare address is one host).
pub fn parse_cidrs(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|c| {
            let c = c.trim();
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{c:?} is not a CIDR (like 10.0.0.0/8) or an IP address"))
        })
        .collect()
}

/// Makes requests to addresses the SSRF rules allow, and nowhere else.
#[derive(Clone, Debug)]
pub struct NetGuard {
    limits: GuardLimits,
    user_agent: String,
}

impl NetGuard {
    /// A guard with `limits`, sending `user_agent`.
    pub fn new(limits: GuardLimits, user_agent: impl Into<String>) -> Self {
        Self { limits, user_agent: user_agent.into() }
    }

    /// The limits it applies.
    pub fn limits(&self) -> &GuardLimits {
        &self.limits
    }

    /// The class that refuses `ip`, or `None` if it may be reached (public,
    /// or inside an allow-listed network).
    pub fn refusal(&self, ip: IpAddr) -> Option<AddressClass> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let class = classify(ip)?;
        (!self.limits.allow.iter().any(|net| net.contains(&ip))).then_some(class)
    }

    /// Checks a URL's scheme and host, resolves the host once and checks
    /// every address it resolves to; returns the addresses to connect to.
    pub async fn check(&self, url: &Url) -> Result<Vec<SocketAddr>, GuardError> {
        let bad = |why: &str| GuardError::BadUrl { url: url.as_str().chars().take(200).collect(), why: why.into() };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("only http and https are fetched"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in the URL are not sent"));
        }
        let port = url.port_or_known_default().ok_or_else(|| bad("no port"))?;
        let host = url.host().ok_or_else(|| bad("no host"))?;
        let addrs: Vec<SocketAddr> = match host {
            url::Host::Ipv4(ip) => vec![SocketAddr::new(ip.into(), port)],
            url::Host::Ipv6(ip) => vec![SocketAddr::new(ip.into(), port)],
            url::Host::Domain(name) => {
                let found = tokio::time::timeout(self.limits.connect_timeout, tokio::net::lookup_host((name, port)))
                    .await
                    .map_err(|_| GuardError::Timeout(format!("resolving {name}")))?
                    .map_err(|e| GuardError::Resolve { host: name.into(), why: e.to_string() })?;
                found.collect()
            }
        };
        if addrs.is_empty() {
            return Err(GuardError::Resolve { host: host.to_string(), why: "no address".into() });
        }
        // Every address must pass: a name that also resolves inward is refused as a whole.
        for a in &addrs {
            if let Some(class) = self.refusal(a.ip()) {
                return Err(GuardError::Refused { host: host.to_string(), addr: a.ip(), class });
            }
        }
        Ok(addrs)
    }

    /// A client for one checked hop: DNS pinned to `addrs`, no redirects,
    /// no proxy, the connect and total caps.
    fn client(&self, url: &Url, addrs: &[SocketAddr], total: Duration) -> Result<reqwest::Client, GuardError> {
        let mut builder = reqwest::Client::builder()
            .redirect(Policy::none())
            .no_proxy()
            .connect_timeout(self.limits.connect_timeout)
            .timeout(total)
            .user_agent(&self.user_agent);
        if let Some(url::Host::Domain(name)) = url.host() {
            builder = builder.resolve_to_addrs(name, addrs);
        }
        builder.build().map_err(GuardError::from_reqwest)
    }

    /// Sends `method` to `url` (with what `build` adds to each request),
    /// following up to `max_redirects` redirects itself, each target checked
    /// like the first. A redirect from a POST is not followed (it is
    /// returned as it came). Returns the final response and its URL.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<(Response, Url), GuardError> {
        let started = tokio::time::Instant::now();
        let mut url = Url::parse(url)
            .map_err(|e| GuardError::BadUrl { url: url.chars().take(200).collect(), why: e.to_string() })?;
        let mut hops = 0u32;
        loop {
            let addrs = self.check(&url).await?;
            let left = self.limits.total_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(GuardError::Timeout(format!("{} s in all", self.limits.total_timeout.as_secs())));
            }
            let client = self.client(&url, &addrs, left)?;
            let response =
                build(client.request(method.clone(), url.clone())).send().await.map_err(GuardError::from_reqwest)?;
            let status = response.status();
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED || method != Method::GET {
                return Ok((response, url));
            }
            if hops >= self.limits.max_redirects {
                return Err(GuardError::TooManyRedirects(self.limits.max_redirects));
            }
            let next = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| url.join(loc).ok())
                .ok_or(GuardError::BadRedirect(status))?;
            tracing::info!(from = %redacted(&url), to = %redacted(&next), status = status.as_u16(), "Following a redirect");
            url = next;
            hops += 1;
        }
    }
}

/// A URL for logs: scheme, host, port and path, without query or fragment
/// (which may carry tokens).
pub fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<AddressClass> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn every_inward_address_class_is_refused() {
        use AddressClass::*;
        let table = [
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("169.254.169.254", Some(LinkLocal)),
            ("169.254.0.1", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.254", Some(SharedCgnat)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("192.0.2.10", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.200", Some(Documentation)),
            ("2001:db8::1", Some(Documentation)),
            ("192.0.0.8", Some(Reserved)),
            ("198.18.0.1", Some(Reserved)),
            ("240.0.0.1", Some(Reserved)),
            ("fec0::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            // IPv4 inside IPv6 is judged by its IPv4.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("2002:0a00:0001::1", Some(Private)),
            ("::127.0.0.1", Some(Reserved)),
            // Public addresses pass.
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("169.255.0.1", None),
            ("192.169.0.1", None),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::808:808", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
        ];
        for (addr, expected) in table {
            assert_eq!(class(addr), expected, "{addr}");
        }
    }

    fn guard(allow: &[&str]) -> NetGuard {
        let allow = parse_cidrs(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        NetGuard::new(
            GuardLimits {
                allow,
                max_redirects: 2,
                connect_timeout: Duration::from_secs(2),
                total_timeout: Duration::from_secs(5),
            },
            "test",
        )
    }

    #[test]
    fn the_allow_list_opens_only_its_networks() {
        let g = guard(&["127.0.0.1/32", "10.1.0.0/16", "fd00::5"]);
        assert_eq!(g.refusal("127.0.0.1".parse().unwrap()), None);
        assert_eq!(g.refusal("::ffff:127.0.0.1".parse().unwrap()), None, "mapped form of an allowed address");
        assert_eq!(g.refusal("127.0.0.2".parse().unwrap()), Some(AddressClass::Loopback));
        assert_eq!(g.refusal("10.1.200.3".parse().unwrap()), None);
        assert_eq!(g.refusal("10.2.0.1".parse().unwrap()), Some(AddressClass::Private));
        assert_eq!(g.refusal("fd00::5".parse().unwrap()), None);
        assert_eq!(g.refusal("169.254.169.254".parse().unwrap()), Some(AddressClass::LinkLocal));
        assert_eq!(g.refusal("8.8.8.8".parse().unwrap()), None);
        assert!(parse_cidrs(&["10.0.0.0/33".into()]).is_err());
        assert!(parse_cidrs(&["nonsense".into()]).is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_before_any_connection() {
        let g = guard(&[]);
        for (url, refusal) in [
            ("ftp://example.com/a.mp4", true),
            ("file:///etc/passwd", true),
            ("http://user:pw@8.8.8.8/", true),
            ("http://127.0.0.1:9/a.mp4", true),
            ("http://[::1]/a.mp4", true),
            ("http://169.254.169.254/latest/meta-data/", true),
            ("http://[::ffff:10.0.0.1]/", true),
            ("http://localhost:1/", true),
            ("http://0x7f000001/", true),
        ] {
            let err = g.check(&Url::parse(url).unwrap()).await.unwrap_err();
            assert_eq!(err.is_refusal(), refusal, "{url}: {err}");
        }
        let err = g.send(Method::GET, "http://10.0.0.1/x", |r| r).await.unwrap_err();
        assert!(matches!(err, GuardError::Refused { class: AddressClass::Private, .. }), "{err}");
    }

    #[test]
    fn logged_urls_lose_their_query_and_credentials() {
        let u = Url::parse("https://u:p@example.com/v.mp4?token=secret#x").unwrap();
        assert_eq!(redacted(&u), "https://example.com/v.mp4");
    }
}
