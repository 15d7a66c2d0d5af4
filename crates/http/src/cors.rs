//! CORS for browser clients, off unless the operator lists exact origins (`--cors-origins`):
//! then preflights from those origins are answered and only those origins are reflected, with
//! `Authorization` and `X-API-Key` allowed. Other origins get no CORS header, so browsers keep
//! their pages from reading answers; clients that are not browsers are unaffected.

use actix_cors::Cors;
use actix_web::http::{header, Method, Uri};

/// How long browsers may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE_SECS: usize = 600;

/// A `--cors-origins` entry that is not an exact origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CORS origin '{0}': expected an exact origin such as https://app.example.com or http://localhost:3000 (scheme, host and optional port; no path, no wildcard)")]
pub struct BadOrigin(pub String);

/// Checks and normalises origins: `http` or `https`, a host, an optional port, nothing else;
/// scheme and host in lower case as browsers send them.
///
/// # Errors
/// The first entry that is not such an origin.
pub fn parse_origins(raw: &[String]) -> Result<Vec<String>, BadOrigin> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for entry in raw.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let origin = parse_origin(entry).ok_or_else(|| BadOrigin(entry.to_owned()))?;
        if !out.contains(&origin) {
            out.push(origin);
        }
    }
    Ok(out)
}

fn parse_origin(entry: &str) -> Option<String> {
    let bare = entry.strip_suffix('/').unwrap_or(entry);
    let uri: Uri = bare.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    let plain = matches!(scheme.as_str(), "http" | "https")
        && !authority.as_str().contains('@')
        && !authority.host().is_empty()
        && !authority.host().contains('*')
        && uri.path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/");
    plain.then(|| format!("{scheme}://{}", authority.as_str().to_ascii_lowercase()))
}

/// The CORS middleware for `origins` (already checked by [`parse_origins`]).
pub(crate) fn middleware(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::HeaderName::from_static("x-api-key")])
        .expose_headers([header::ETAG, header::CONTENT_DISPOSITION, header::RETRY_AFTER])
        .max_age(PREFLIGHT_MAX_AGE_SECS)
        .block_on_origin_mismatch(false);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_origins_are_accepted() {
        let ok =
            parse_origins(&["HTTPS://App.Example.com".into(), "http://localhost:3000/".into(), " ".into(), "http://[::1]:8080".into()])
                .unwrap();
        assert_eq!(ok, ["https://app.example.com", "http://localhost:3000", "http://[::1]:8080"]);
        for bad in [
            "*",
            "app.example.com",
            "https://",
            "https://a.example/path",
            "ftp://a.example",
            "https://*.example.com",
            "https://u@a.example",
            "https://a.example?q",
        ] {
            assert_eq!(parse_origins(&[bad.to_owned()]), Err(BadOrigin(bad.to_owned())), "{bad}");
        }
    }
}
