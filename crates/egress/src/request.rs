//! The one request a sandbox's connection to the proxy starts with:
//! `CONNECT host:port` (then TLS) or a plain-HTTP request with an absolute
//! URI (`GET http://host[:port]/path`), which is rewritten to origin form
//! with `Host` set to the URI's authority and `Connection: close`.

/// The largest request head the proxy reads.
pub const MAX_HEAD: usize = 16 << 10;
const MAX_HEADERS: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A tunnel; the client's TLS follows.
    Connect,
    /// A plain-HTTP request; `head` is what goes upstream (origin form).
    Http { head: Vec<u8> },
}

#[derive(Debug, PartialEq, Eq)]
pub struct ProxyRequest {
    pub kind: Kind,
    /// As the client wrote it (brackets removed), not yet normalized.
    pub host: String,
    pub port: u16,
}

/// Where the head ends (`\r\n\r\n`), if it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses one complete head (up to and including the blank line).
pub fn parse(head: &[u8]) -> Result<ProxyRequest, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete request head".into()),
        Err(e) => return Err(format!("malformed request: {e}")),
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = authority(target, None)?;
        return Ok(ProxyRequest {
            kind: Kind::Connect,
            host,
            port,
        });
    }
    let Some(rest) = strip_prefix_ci(target, "http://") else {
        return Err(if strip_prefix_ci(target, "https://").is_some() {
            "an https:// URL goes through CONNECT, not a plain request".into()
        } else {
            format!("{target:?} is not an absolute http:// URL (is HTTP_PROXY set?)")
        });
    };
    let (auth, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.contains('@') {
        return Err("credentials in the URL are not forwarded".into());
    }
    let (host, port) = authority(auth, Some(80))?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {auth}\r\n").into_bytes();
    for h in req.headers.iter() {
        let dropped = [
            "host",
            "connection",
            "proxy-connection",
            "proxy-authorization",
            "keep-alive",
        ]
        .iter()
        .any(|d| h.name.eq_ignore_ascii_case(d));
        if !dropped {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(ProxyRequest {
        kind: Kind::Http { head: out },
        host,
        port,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// `host:port`, `[v6]:port`; the port is required unless `default` is set.
fn authority(auth: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("{auth:?} is not host:port");
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else if auth.matches(':').count() == 1 {
        let (h, p) = auth.split_once(':').ok_or_else(bad)?;
        (h, Some(p))
    } else if auth.contains(':') {
        return Err(bad());
    } else {
        (auth, None)
    };
    let port = match (port, default) {
        (Some(p), _) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad()),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect() {
        let r = parse(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
            .unwrap();
        assert_eq!(
            r,
            ProxyRequest {
                kind: Kind::Connect,
                host: "api.example.com".into(),
                port: 443
            }
        );
        let r = parse(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("2001:db8::1", 8443));
        assert!(
            parse(b"CONNECT api.example.com HTTP/1.1\r\n\r\n").is_err(),
            "port required"
        );
        assert!(parse(b"CONNECT a.com:0 HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"CONNECT a.com:99999 HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn absolute_http_is_rewritten_to_origin_form() {
        let r = parse(b"GET http://allowed.test:8080/a/b?x=1 HTTP/1.1\r\nHost: evil.example\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("allowed.test", 8080));
        let Kind::Http { head } = r.kind else {
            panic!()
        };
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /a/b?x=1 HTTP/1.1\r\nHost: allowed.test:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let r = parse(b"POST http://a.example.com HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.port, 80);
        let Kind::Http { head } = r.kind else {
            panic!()
        };
        assert!(head.starts_with(b"POST / HTTP/1.1\r\n"));
    }

    #[test]
    fn refused_forms() {
        for (head, needle) in [
            (&b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n"[..], "absolute"),
            (b"GET https://a.com/ HTTP/1.1\r\n\r\n", "CONNECT"),
            (b"GET http://user:pw@a.com/ HTTP/1.1\r\n\r\n", "credentials"),
            (b"GET http://a.com:x/ HTTP/1.1\r\n\r\n", "host:port"),
            (b"GET http://a b/ HTTP/1.1\r\n\r\n", "malformed"),
            (b"\x16\x03\x01\x00\x10garbage\r\n\r\n", "malformed"),
        ] {
            let err = parse(head).unwrap_err();
            assert!(
                err.contains(needle),
                "{:?}: {err}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
