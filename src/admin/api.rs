//! The pieces every role's API shares: the token check, paths, bodies and the answers that
//! do not depend on the role (health, the dashboard).

use serde_json::Value;

use crate::config::Secret;
use crate::net::http::{Request, Response};

/// `/healthz` and the dashboard page carry no data: they are served without the token (the
/// page asks for it and sends it with each of its requests).
pub fn public(req: &Request<'_>) -> Option<Response> {
    let get = matches!(req.method, "GET" | "HEAD");
    match req.path {
        "/healthz" if get => Some(Response::new(
            200,
            "text/plain; charset=utf-8",
            b"ok\n".to_vec(),
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
    let presented = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
        .map(<[u8]>::trim_ascii);
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
            body: b"",
        }
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
