//! Where a redirect leads, and with what: pure. The next hop's URL is
//! judged like the first (`fetchable_url`: http or https, no user or
//! password), then by the rules and the guard, by the caller.

use hyper::body::Bytes;
use hyper::http::{HeaderMap, Method, header};
use url::Url;

use crate::policy::tools::arguments::fetchable_url;

/// The most redirects one fetch follows.
pub const MAX_REDIRECTS: usize = 5;

/// The next hop of a redirect.
#[derive(Debug, PartialEq, Eq)]
pub struct Hop {
    pub url: Url,
    pub method: Method,
    pub body: Bytes,
}

/// The hop a `status` answer with `headers` to `method` on `from` leads
/// to: `None` when it is no redirect (or one without `Location`, which is
/// the answer); an error when its `Location` is not fetchable. 303, and
/// 301 or 302 to a POST, go on as GET without the body (as browsers do);
/// 307 and 308 keep both.
pub fn next(
    status: u16,
    headers: &HeaderMap,
    from: &Url,
    method: &Method,
    body: &Bytes,
) -> Option<Result<Hop, String>> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = headers.get(header::LOCATION)?;
    let Ok(location) = location.to_str() else {
        return Some(Err("its Location is not text".into()));
    };
    let url = match from.join(location) {
        Ok(url) => url,
        Err(error) => return Some(Err(format!("invalid Location {location:?}: {error}"))),
    };
    let url = match fetchable_url(url.as_str()) {
        Ok(url) => url,
        Err(why) => return Some(Err(format!("to {url}: {why}"))),
    };
    let as_get = status == 303 && *method != Method::HEAD
        || matches!(status, 301 | 302) && *method == Method::POST;
    Some(Ok(if as_get {
        Hop {
            url,
            method: Method::GET,
            body: Bytes::new(),
        }
    } else {
        Hop {
            url,
            method: method.clone(),
            body: body.clone(),
        }
    }))
}

#[cfg(test)]
mod tests {
    use hyper::http::HeaderValue;

    use super::*;

    fn to(status: u16, location: &str, method: Method) -> Option<Result<Hop, String>> {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
        let from = Url::parse("http://a.example/dir/page?q=1").unwrap();
        next(
            status,
            &headers,
            &from,
            &method,
            &Bytes::from_static(b"body"),
        )
    }

    #[test]
    fn redirects_are_resolved_and_judged_like_the_first_url() {
        let hop = to(302, "../other", Method::GET).unwrap().unwrap();
        assert_eq!(hop.url.as_str(), "http://a.example/other");
        let post = to(303, "https://b.example/x", Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!((post.method, post.body), (Method::GET, Bytes::new()));
        let kept = to(307, "/y", Method::POST).unwrap().unwrap();
        assert_eq!(
            (kept.method, kept.body),
            (Method::POST, Bytes::from_static(b"body"))
        );
        assert_eq!(
            to(302, "file:///etc/passwd", Method::GET).unwrap(),
            Err("to file:///etc/passwd: URL scheme \"file\" refused: only http and https".into())
        );
        assert_eq!(
            to(301, "http://allowed@evil.example/", Method::GET).unwrap(),
            Err("to http://allowed@evil.example/: URLs with a user or password are refused".into())
        );
        assert_eq!(to(200, "/z", Method::GET), None);
        assert_eq!(
            next(
                302,
                &HeaderMap::new(),
                &Url::parse("http://a/").unwrap(),
                &Method::GET,
                &Bytes::new()
            ),
            None
        );
    }
}
