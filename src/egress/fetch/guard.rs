//! The SSRF guard's judgement of one address: pure. An address is refused
//! when it, or an IPv4 address it carries (IPv4-mapped, IPv4-compatible,
//! NAT64, 6to4, Teredo), is special (loopback, private, link-local, cloud
//! metadata, ...) or in one of the cluster's networks, unless an
//! `allowHosts` entry names it; an address a `denyHosts` entry names is
//! refused whatever allows it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::policy::tools::argument_rules::ArgumentRulesInForce;

/// Cloud metadata services: refused by name, so the reason says so
/// (AWS, GCP, Azure, OpenStack, DigitalOcean: 169.254.169.254; AWS IPv6:
/// fd00:ec2::254; Alibaba: 100.100.100.200; Azure's wire server:
/// 168.63.129.16, a public address; Oracle: 192.0.0.192).
pub const METADATA: [IpAddr; 5] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
];

/// The special IPv4 ranges, each with what it is (IANA's special-purpose
/// registry, and 240/4).
const SPECIAL_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified (this network)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT, RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved (240/4)"),
];

/// The special IPv6 ranges. Anything outside global unicast (2000::/3)
/// that is none of these is refused as reserved; the ranges carrying an
/// IPv4 address are judged by it ([`carried`]).
const SPECIAL_V6: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001::/23", "reserved (IETF protocol assignments)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

/// Why an address is refused: the address connected to, and what it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{address} is {why}")]
pub struct Refused {
    pub address: IpAddr,
    pub why: String,
}

/// The guard: the special ranges and the cluster's own networks.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// The pod and service CIDRs (`--fetch-deny-cidr`).
    pub cluster: Vec<IpNet>,
}

impl Guard {
    /// Admits `address` for `rules`, or says why not.
    pub fn judge(&self, address: IpAddr, rules: &ArgumentRulesInForce) -> Result<(), Refused> {
        let refuse = |why: String| Refused { address, why };
        let candidates = std::iter::once(address.to_canonical())
            .chain(carried(address).into_iter().map(|(_, v4)| IpAddr::V4(v4)));
        for candidate in candidates {
            rules
                .check_address(candidate)
                .map_err(|breach| refuse(format!("{breach}")))?;
        }
        if rules.names_address(address) {
            return Ok(());
        }
        for (form, v4) in carried(address) {
            if let Some(why) = self.special(IpAddr::V4(v4)) {
                return Err(refuse(format!("{form} for {v4}, which is {why}")));
            }
        }
        match self.special(address.to_canonical()) {
            Some(why) => Err(refuse(why)),
            None => Ok(()),
        }
    }

    /// What is special about `address` itself, if anything.
    fn special(&self, address: IpAddr) -> Option<String> {
        if METADATA.contains(&address) {
            return Some("a cloud metadata service".into());
        }
        if let Some(net) = self.cluster.iter().find(|net| net.contains(&address)) {
            return Some(format!(
                "in the cluster's network {net} (--fetch-deny-cidr)"
            ));
        }
        let table = match address {
            IpAddr::V4(_) => SPECIAL_V4,
            IpAddr::V6(_) => SPECIAL_V6,
        };
        let listed = table.iter().find(|(net, _)| {
            net.parse::<IpNet>()
                .expect("the special ranges parse")
                .contains(&address)
        });
        if let Some((net, what)) = listed {
            return Some(format!("{what} ({net})"));
        }
        match address {
            IpAddr::V6(v6)
                if v6.segments()[0] & 0xe000 != 0x2000 && carried(address).is_empty() =>
            {
                Some("reserved (not global unicast 2000::/3)".into())
            }
            _ => None,
        }
    }
}

/// The IPv4 addresses `address` carries, and in which form: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::`) and Teredo (server and
/// client of `2001:0:...`).
pub fn carried(address: IpAddr) -> Vec<(&'static str, Ipv4Addr)> {
    let IpAddr::V6(v6) = address else {
        return Vec::new();
    };
    let s = v6.segments();
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return vec![("IPv4-mapped", mapped)];
    }
    match s {
        [0, 0, 0, 0, 0, 0, high, low] if (high, low) > (0, 1) => {
            vec![("IPv4-compatible", v4(high, low))]
        }
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => vec![("NAT64", v4(high, low))],
        [0x2002, high, low, ..] => vec![("6to4", v4(high, low))],
        [
            0x2001,
            0,
            server_high,
            server_low,
            _,
            _,
            client_high,
            client_low,
        ] => vec![
            ("Teredo server", v4(server_high, server_low)),
            ("Teredo client", v4(!client_high, !client_low)),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(address: &str, rules: &ArgumentRulesInForce) -> Result<(), String> {
        let guard = Guard {
            cluster: vec!["10.96.0.0/12".parse().unwrap()],
        };
        guard
            .judge(address.parse().unwrap(), rules)
            .map_err(|refused| refused.to_string())
    }

    #[test]
    fn special_addresses_are_refused_with_what_they_are() {
        let none = ArgumentRulesInForce::default();
        for (address, reason) in [
            ("127.0.0.1", "127.0.0.1 is loopback (127.0.0.0/8)"),
            ("10.1.2.3", "10.1.2.3 is private (RFC 1918) (10.0.0.0/8)"),
            (
                "100.64.0.1",
                "100.64.0.1 is shared address space (CGNAT, RFC 6598) (100.64.0.0/10)",
            ),
            (
                "169.254.169.254",
                "169.254.169.254 is a cloud metadata service",
            ),
            ("168.63.129.16", "168.63.129.16 is a cloud metadata service"),
            ("fd00:ec2::254", "fd00:ec2::254 is a cloud metadata service"),
            (
                "0.0.0.0",
                "0.0.0.0 is unspecified (this network) (0.0.0.0/8)",
            ),
            (
                "255.255.255.255",
                "255.255.255.255 is broadcast (255.255.255.255/32)",
            ),
            ("224.0.0.1", "224.0.0.1 is multicast (224.0.0.0/4)"),
            (
                "198.18.0.1",
                "198.18.0.1 is benchmarking (RFC 2544) (198.18.0.0/15)",
            ),
            (
                "192.0.2.1",
                "192.0.2.1 is documentation (TEST-NET-1) (192.0.2.0/24)",
            ),
            ("::1", "::1 is loopback (::1/128)"),
            ("::", ":: is unspecified (::/128)"),
            ("fe80::1", "fe80::1 is link-local (fe80::/10)"),
            ("fc00::1", "fc00::1 is unique local (private) (fc00::/7)"),
            (
                "2001:db8::1",
                "2001:db8::1 is documentation (2001:db8::/32)",
            ),
            (
                "4000::1",
                "4000::1 is reserved (not global unicast 2000::/3)",
            ),
            (
                "::ffff:127.0.0.1",
                "::ffff:127.0.0.1 is IPv4-mapped for 127.0.0.1, which is loopback (127.0.0.0/8)",
            ),
            (
                "::127.0.0.1",
                "::7f00:1 is IPv4-compatible for 127.0.0.1, which is loopback (127.0.0.0/8)",
            ),
            (
                "64:ff9b::7f00:1",
                "64:ff9b::7f00:1 is NAT64 for 127.0.0.1, which is loopback (127.0.0.0/8)",
            ),
            (
                "64:ff9b:1::1",
                "64:ff9b:1::1 is local-use NAT64 (RFC 8215) (64:ff9b:1::/48)",
            ),
            (
                "2002:a9fe:a9fe::1",
                "2002:a9fe:a9fe::1 is 6to4 for 169.254.169.254, which is a cloud metadata service",
            ),
            (
                "10.100.0.1",
                "10.100.0.1 is in the cluster's network 10.96.0.0/12 (--fetch-deny-cidr)",
            ),
        ] {
            assert_eq!(judge(address, &none), Err(reason.to_owned()), "{address}");
        }
        for public in [
            "93.184.215.14",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "64:ff9b::5db8:d70e",
        ] {
            assert_eq!(judge(public, &none), Ok(()), "{public}");
        }
        // Teredo: its server and client are judged (client bits inverted).
        let teredo = "2001:0:4136:e378:8000:63bf:80ff:fffe";
        assert_eq!(
            judge(teredo, &none),
            Err(format!(
                "{teredo} is Teredo client for 127.0.0.1, which is loopback (127.0.0.0/8)"
            ))
        );
    }

    #[test]
    fn only_an_allow_entry_naming_the_address_admits_it_and_deny_wins() {
        let rules = ArgumentRulesInForce {
            allow_hosts: Some(vec!["127.0.0.2".into(), "*".into()]),
            deny_hosts: vec!["93.184.215.0/24".into()],
            ..Default::default()
        };
        assert_eq!(judge("127.0.0.2", &rules), Ok(()));
        assert_eq!(judge("::ffff:127.0.0.2", &rules), Ok(()));
        assert!(judge("127.0.0.1", &rules).is_err(), "* names no address");
        let denied = judge("64:ff9b::5db8:d70e", &rules).unwrap_err();
        assert!(
            denied.contains("tools.rules.http_fetch.denyHosts"),
            "{denied}"
        );
    }
}
