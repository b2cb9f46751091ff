//! The pieces every role's API shares: the token check, paths, bodies and the answers that
//! do not depend on the role (health, the dashboard).

use std::time::SystemTime;

use serde_json::Value;

use super::process;
use super::prom::{self, Exposition, Kind};
use crate::config::Secret;
use crate::net::http::{Request, Response};

/// A role's `/metrics`: `tcpforward_build_info`, what `body` writes, then the process
/// metrics of a process started at `started`.
pub fn metrics(started: SystemTime, body: impl FnOnce(&mut Exposition)) -> Response {
    let mut out = Exposition::new();
    out.family(
        "tcpforward_build_info",
        Kind::Gauge,
        "Build of this tcp-forward.",
    );
    out.sample(
        "tcpforward_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    body(&mut out);
    process::write_process_metrics(&mut out, started);
    Response::new(200, prom::CONTENT_TYPE, out.finish().into_bytes())
}

/// `/healthz` and the dashboard page (the server's, `dashboard`) carry no data: they are
/// served without the token (the page asks for it and sends it with each of its requests).
pub fn public(req: &Request<'_>, dashboard: bool) -> Option<Response> {
    let get = matches!(req.method, "GET" | "HEAD");
    match req.path {
        "/" if !dashboard => None,
        "/healthz" if get => Some(Response::new(
            200,
            "text/plain; charset=utf-8",
            b"ok".to_vec(),
        )),
        "/" if get => Some(Response::new(
            200,
            "text/html; charset=utf-8",
            super::DASHBOARD.as_bytes().to_vec(),
        )),
        "/healthz" | "/" => Some(Response::method_not_allowed("GET, HEAD")),
        _ => None,
    }
}

/// Whether the request may be served at all, before its token is looked at.
///
/// A browser is the one client that can be made to send requests it did not mean to: a
/// page elsewhere can post to a loopback address (cross-site request forgery), or rebind
/// its own name to 127.0.0.1 and read the answers (DNS rebinding). So a request that
/// changes something and comes from another origin is refused, and without a token only
/// requests addressed to an IP address or `localhost` are served (a rebound name is
/// neither). With a token neither attack works: a page cannot send it without asking
/// this server (CORS), which never allows it.
pub fn check_origin(token: Option<&Secret>, req: &Request<'_>) -> Result<(), Response> {
    let host = req.host.map(<[u8]>::trim_ascii);
    if token.is_none()
        && let Some(host) = host
        && !is_address(host)
    {
        return Err(Response::forbidden(
            "without ADMIN_TOKEN only requests to an IP address or localhost are served",
        ));
    }
    let safe = matches!(req.method, "GET" | "HEAD");
    if !safe && let Some(origin) = req.origin.map(<[u8]>::trim_ascii) {
        let same = host.is_some_and(|h| {
            origin
                .strip_prefix(b"http://")
                .is_some_and(|o| o.eq_ignore_ascii_case(h))
        });
        if !same {
            return Err(Response::forbidden("cross-origin request refused"));
        }
    }
    Ok(())
}

/// `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080` (each with or without the port).
fn is_address(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// With a token configured, the request must carry `Authorization: Bearer <token>`.
pub fn authorize(token: Option<&Secret>, req: &Request<'_>) -> Result<(), Response> {
    let Some(token) = token else {
        return Ok(());
    };
    let Some(value) = req.authorization else {
        return Err(Response::unauthorized(
            "this API requires a token: send Authorization: Bearer <ADMIN_TOKEN>",
        ));
    };
    // The scheme is case-insensitive (RFC 9110).
    let presented = value
        .split_at_checked(7)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|(_, t)| t.trim_ascii());
    match presented {
        Some(p) if token.matches(p) => Ok(()),
        _ => Err(Response::unauthorized("wrong token")),
    }
}

/// The path's segments: `/api/mappings/80` is `["api", "mappings", "80"]`.
pub fn segments(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

/// A JSON object body, or the 400 that says why not.
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Response::error(400, "the body must be a JSON object")),
        Err(e) => Err(Response::error(400, &format!("the body is not JSON: {e}"))),
    }
}

/// A path segment that must be a number of type `T` in range.
pub fn number<T: std::str::FromStr>(segment: &str, what: &str) -> Result<T, Response> {
    if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Response::error(
            400,
            &format!("{segment:?} is not a {what}"),
        ));
    }
    segment
        .parse()
        .map_err(|_| Response::error(400, &format!("{segment:?} is not a {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(path: &'a str, auth: Option<&'a [u8]>) -> Request<'a> {
        Request {
            method: "GET",
            path,
            query: "",
            authorization: auth,
            host: Some(b"127.0.0.1:8080"),
            origin: None,
            body: b"",
        }
    }

    #[test]
    fn foreign_origins_and_rebound_names_are_refused() {
        let token = Secret::new("t".into());
        let check = |token: Option<&Secret>, method, host: &'static [u8], origin| {
            let r = Request {
                method,
                host: Some(host),
                origin,
                ..req("/api/reload", None)
            };
            check_origin(token, &r).map_or_else(|r| r.status, |()| 200)
        };
        for host in [
            &b"127.0.0.1:8080"[..],
            b"127.0.0.1",
            b"[::1]:8080",
            b"localhost:8080",
            b"LOCALHOST",
        ] {
            assert_eq!(check(None, "GET", host, None), 200, "{host:?}");
        }
        assert_eq!(check(None, "GET", b"evil.example:8080", None), 403);
        assert_eq!(check(None, "GET", b"[::1", None), 403);
        assert_eq!(check(Some(&token), "GET", b"admin.example:8080", None), 200);
        let same = Some(&b"http://127.0.0.1:8080"[..]);
        let other = Some(&b"http://evil.example"[..]);
        assert_eq!(check(None, "POST", b"127.0.0.1:8080", same), 200);
        assert_eq!(check(None, "POST", b"127.0.0.1:8080", other), 403);
        assert_eq!(check(Some(&token), "PUT", b"127.0.0.1:8080", other), 403);
        assert_eq!(check(None, "GET", b"127.0.0.1:8080", other), 200);
        assert_eq!(check(None, "POST", b"127.0.0.1:8080", None), 200);
    }

    #[test]
    fn the_token_is_required_when_set() {
        let token = Secret::new("s3cret".into());
        assert!(authorize(None, &req("/api/clients", None)).is_ok());
        let status = |auth: Option<&[u8]>| match authorize(Some(&token), &req("/x", auth)) {
            Ok(()) => 200,
            Err(r) => r.status,
        };
        assert_eq!(status(None), 401);
        assert_eq!(status(Some(b"Bearer s3cret")), 200);
        assert_eq!(status(Some(b"bearer s3cret ")), 200);
        assert_eq!(status(Some(b"BEARER s3cret")), 200);
        assert_eq!(status(Some(b"Bearer s3cre")), 401);
        assert_eq!(status(Some(b"Bearer s3cret2")), 401);
        assert_eq!(status(Some(b"Basic s3cret")), 401);
        assert_eq!(status(Some(b"s3cret")), 401);
    }

    #[test]
    fn paths_and_numbers() {
        assert_eq!(segments("/api/mappings/80"), ["api", "mappings", "80"]);
        assert_eq!(segments("/api/mappings/"), ["api", "mappings"]);
        assert_eq!(number::<u16>("80", "port").ok(), Some(80));
        for bad in ["", "-1", "+1", "65536", "8o", " 80"] {
            assert_eq!(number::<u16>(bad, "port").unwrap_err().status, 400, "{bad}");
        }
    }
}
