//! The headers `http_fetch` never passes on: credentials (the egress
//! service's or anyone's must not ride on an agent's request, and a
//! server's cookies must not reach the agent to be replayed) and the
//! hop-by-hop headers of RFC 9110 §7.6.1, which belong to one connection
//! (the client frames its own request and sets `Host` itself).

use hyper::http::HeaderMap;
use hyper::http::header::{self, HeaderName};

/// Hop-by-hop headers, both ways.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removed from the agent's request besides the hop-by-hop ones.
const REQUEST_ONLY: [&str; 4] = ["authorization", "cookie", "host", "content-length"];

/// Removed from the answer besides the hop-by-hop ones.
const RESPONSE_ONLY: [&str; 2] = ["set-cookie", "set-cookie2"];

/// The agent's request headers without credentials and hop-by-hop ones.
pub fn request(headers: &mut HeaderMap) {
    strip(headers, &REQUEST_ONLY);
}

/// The answer's headers without cookies and hop-by-hop ones.
pub fn response(headers: &mut HeaderMap) {
    strip(headers, &RESPONSE_ONLY);
}

/// Removes `extra`, the hop-by-hop headers, and every header the
/// `Connection` header names.
fn strip(headers: &mut HeaderMap, extra: &[&str]) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP.iter().chain(extra) {
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests {
    use hyper::http::HeaderValue;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_go_both_ways() {
        let mut sent = map(&[
            ("authorization", "Bearer x"),
            ("Proxy-Authorization", "Basic y"),
            ("cookie", "a=b"),
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "s"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "close"),
            ("host", "evil"),
            ("accept", "text/html"),
        ]);
        request(&mut sent);
        assert_eq!(sent, map(&[("accept", "text/html")]));
        let mut answered = map(&[
            ("set-cookie", "session=1"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        response(&mut answered);
        assert_eq!(answered, map(&[("content-type", "text/plain")]));
    }
}
