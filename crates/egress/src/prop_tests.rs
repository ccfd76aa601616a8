//! The two parsers that read a sandbox's bytes never panic, whatever they
//! are given, and a ClientHello's name survives any split into records.

use crate::{request, sni};
use proptest::prelude::*;

proptest! {
    #[test]
    fn request_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = request::parse(&bytes);
        let _ = request::head_end(&bytes);
    }

    #[test]
    fn hello_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = sni::parse(&bytes);
    }

    #[test]
    fn hello_parser_takes_any_mutation_of_a_real_hello(
        record in 1usize..300,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    ) {
        let mut hello = sni::client_hello(Some("api.example.com"), record);
        prop_assert_eq!(sni::parse(&hello), sni::Hello::ServerName(Some("api.example.com".into())));
        for (at, byte) in flips {
            let n = hello.len();
            hello[at % n] = byte;
        }
        let _ = sni::parse(&hello);
    }

    #[test]
    fn absolute_urls_keep_their_host(host in "[a-z]{1,10}(\\.[a-z]{1,10}){1,3}", port in 1u16.., path in "(/[a-z0-9]{0,8}){0,4}") {
        let head = format!("GET http://{host}:{port}{path} HTTP/1.1\r\nHost: other.example\r\n\r\n");
        let r = request::parse(head.as_bytes()).unwrap();
        prop_assert_eq!(&r.host, &host);
        prop_assert_eq!(r.port, port);
        let request::Kind::Http { head } = r.kind else { panic!("not http") };
        let host_header = format!("\r\nHost: {host}:{port}\r\n");
        prop_assert!(String::from_utf8(head).unwrap().contains(&host_header));
    }
}
