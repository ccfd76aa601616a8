//! The server name of a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3),
//! read from the first bytes a client sends after CONNECT. Reassembles a
//! handshake message split over several records; nothing is decrypted.

/// A ClientHello longer than this is refused (real ones are < 2 KiB, a few
/// KiB with post-quantum key shares).
pub const MAX_HELLO: usize = 32 << 10;

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// A complete ClientHello; its host_name, if it carries one.
    ServerName(Option<String>),
    /// Not a TLS ClientHello.
    Invalid(&'static str),
}

/// Parses the records in `buf` (everything the client sent so far).
pub fn parse(buf: &[u8]) -> Hello {
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Hello::Incomplete;
        }
        if rest[0] != 22 {
            return Hello::Invalid("not a TLS handshake record");
        }
        if rest[1] != 3 {
            return Hello::Invalid("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > (16 << 10) + 2048 {
            return Hello::Invalid("bad TLS record length");
        }
        if rest.len() < 5 + len {
            return Hello::Incomplete;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Hello::Invalid("the first handshake message is not a ClientHello");
            }
            let body = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if body + 4 > MAX_HELLO {
                return Hello::Invalid("ClientHello too large");
            }
            if handshake.len() >= body + 4 {
                return match server_name(&handshake[4..body + 4]) {
                    Some(name) => Hello::ServerName(name),
                    None => Hello::Invalid("malformed ClientHello"),
                };
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// `None`: malformed; `Some(None)`: no server_name extension.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok().map(|s| Some(s.to_string()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// A minimal ClientHello naming `sni` (for tests), split into records of
/// at most `record` bytes of payload.
#[cfg(test)]
pub fn client_hello(sni: Option<&str>, record: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let n = name.len() as u16;
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(n + 5).to_be_bytes());
        exts.extend_from_slice(&(n + 3).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&n.to_be_bytes());
        exts.extend_from_slice(name.as_bytes());
    }
    // supported_versions: TLS 1.3
    exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in hs.chunks(record) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_server_name() {
        let hello = client_hello(Some("api.example.com"), 16384);
        assert_eq!(
            parse(&hello),
            Hello::ServerName(Some("api.example.com".into()))
        );
    }

    #[test]
    fn no_sni_is_none() {
        assert_eq!(parse(&client_hello(None, 16384)), Hello::ServerName(None));
    }

    #[test]
    fn reassembles_records_and_waits_for_more() {
        let hello = client_hello(Some("a.example.org"), 10);
        assert_eq!(
            parse(&hello),
            Hello::ServerName(Some("a.example.org".into()))
        );
        for cut in [0, 3, 5, 20, hello.len() - 1] {
            assert_eq!(parse(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Hello::Invalid(_)
        ));
        let mut hello = client_hello(Some("a.example.org"), 16384);
        hello[5] = 2; // a ServerHello
        assert!(matches!(parse(&hello), Hello::Invalid(_)));
        // The server_name's own length runs past its extension.
        let mut bad = client_hello(Some("a.example.org"), 16384);
        let at = bad.windows(13).position(|w| w == b"a.example.org").unwrap();
        bad[at - 1] = 0x7f;
        assert_eq!(parse(&bad), Hello::Invalid("malformed ClientHello"));
    }
}
