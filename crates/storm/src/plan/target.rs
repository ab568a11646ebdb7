//! The server as a run names it: a loopback `http://` target, checked before the run.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A levee server on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub authority: String,
}

impl Target {
    /// Parses `http://HOST:PORT[/...]`; HOST must be loopback.
    pub fn parse(url: &str) -> Result<Target> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            Error::invalid(format!("server '{url}': only http:// URLs are supported"))
        })?;
        let authority = rest.split('/').next().unwrap_or_default().to_owned();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .map_err(|_| Error::invalid(format!("server '{url}': bad port")))?,
            ),
            _ => (authority.as_str(), 80),
        };
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse().map_err(|_| {
                Error::invalid(format!(
                    "server '{url}': host must be a loopback IP or localhost"
                ))
            })?
        };
        if !ip.is_loopback() {
            return Err(Error::invalid(format!(
                "server '{url}': storm only targets loopback addresses (127.0.0.0/8, ::1)"
            )));
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            authority,
        })
    }

    /// The base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.base(), "http://127.0.0.1:8080");
        assert_eq!(
            Target::parse("http://localhost:81/x").unwrap().addr.port(),
            81
        );
        assert_eq!(
            Target::parse("http://[::1]:9").unwrap().addr,
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(Target::parse("http://127.9.9.9").unwrap().addr.port(), 80);
        for bad in [
            "http://192.168.1.1:80",
            "https://127.0.0.1",
            "http://example.com",
            "127.0.0.1:80",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
