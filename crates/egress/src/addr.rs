//! What kind of address a destination resolved to. Only `Public` is
//! reachable by default; `allow_private` (tests) adds loopback, private,
//! link-local and CGNAT; the rest is never reachable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    Loopback,
    /// RFC 1918, IPv6 unique local (fc00::/7).
    Private,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10 (carrier-grade NAT, also used by some clouds inside).
    Cgnat,
    Multicast,
    /// 0.0.0.0/8, :: (connecting to it reaches the host itself).
    Unspecified,
    /// 255.255.255.255, 240.0.0.0/4, documentation and benchmark ranges.
    Reserved,
    /// 169.254.169.254, fd00:ec2::254: the cloud's instance metadata service.
    Metadata,
}

impl AddrClass {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => v4_class(v4),
            IpAddr::V6(v6) => v6_class(v6),
        }
    }

    /// May a connection go there? `allow_private` is the test opt-in.
    pub fn reachable(self, allow_private: bool) -> bool {
        match self {
            AddrClass::Public => true,
            AddrClass::Loopback | AddrClass::Private | AddrClass::LinkLocal | AddrClass::Cgnat => {
                allow_private
            }
            AddrClass::Multicast
            | AddrClass::Unspecified
            | AddrClass::Reserved
            | AddrClass::Metadata => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Cgnat => "CGNAT",
            AddrClass::Multicast => "multicast",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Reserved => "reserved",
            AddrClass::Metadata => "cloud-metadata",
        }
    }
}

fn v4_class(ip: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        AddrClass::Metadata
    } else if a == 0 {
        AddrClass::Unspecified
    } else if a == 127 {
        AddrClass::Loopback
    } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
        AddrClass::Private
    } else if a == 169 && b == 254 {
        AddrClass::LinkLocal
    } else if a == 100 && (64..128).contains(&b) {
        AddrClass::Cgnat
    } else if (224..240).contains(&a) {
        AddrClass::Multicast
    } else if a >= 240
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

fn v6_class(ip: Ipv6Addr) -> AddrClass {
    // An IPv4 address in IPv6 clothing is judged as IPv4: mapped
    // (::ffff:0:0/96), compatible (::/96, deprecated) and NAT64 (64:ff9b::/96).
    let s = ip.segments();
    let embedded = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
        AddrClass::Metadata
    } else if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip.is_loopback() {
        AddrClass::Loopback
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        v4_class(v4)
    } else if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        v4_class(embedded())
    } else if s[0] & 0xfe00 == 0xfc00 {
        AddrClass::Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddrClass {
        AddrClass::of(s.parse().unwrap())
    }

    #[test]
    fn classes() {
        for (ip, want) in [
            ("8.8.8.8", AddrClass::Public),
            ("1.1.1.1", AddrClass::Public),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.0.9", AddrClass::Loopback),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("169.254.169.254", AddrClass::Metadata),
            ("100.64.0.1", AddrClass::Cgnat),
            ("100.127.255.255", AddrClass::Cgnat),
            ("100.128.0.1", AddrClass::Public),
            ("224.0.0.1", AddrClass::Multicast),
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Unspecified),
            ("255.255.255.255", AddrClass::Reserved),
            ("240.0.0.1", AddrClass::Reserved),
            ("::1", AddrClass::Loopback),
            ("::", AddrClass::Unspecified),
            ("fd00:ec2::254", AddrClass::Metadata),
            ("fd12::1", AddrClass::Private),
            ("fe80::1", AddrClass::LinkLocal),
            ("ff02::1", AddrClass::Multicast),
            ("2606:4700::1111", AddrClass::Public),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:169.254.169.254", AddrClass::Metadata),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("64:ff9b::a00:1", AddrClass::Private),
            ("::10.0.0.1", AddrClass::Private),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn opt_in_opens_local_classes_but_never_metadata() {
        assert!(AddrClass::Public.reachable(false));
        for c in [
            AddrClass::Loopback,
            AddrClass::Private,
            AddrClass::LinkLocal,
            AddrClass::Cgnat,
        ] {
            assert!(!c.reachable(false), "{c:?}");
            assert!(c.reachable(true), "{c:?}");
        }
        for c in [
            AddrClass::Metadata,
            AddrClass::Unspecified,
            AddrClass::Multicast,
            AddrClass::Reserved,
        ] {
            assert!(!c.reachable(true), "{c:?}");
        }
    }
}
