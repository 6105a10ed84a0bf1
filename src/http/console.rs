//! The browser console: static files from `web/`, compiled into the binary (no build tool at run
//! time, no network), served at `/` (the page) and `/console/{file}` (its modules, styles and
//! the vendored chart library with its licence).
//!
//! Every URL the page uses is relative, so the console works under a base path behind a reverse
//! proxy. The files hold no secret and load without an API key (the access layer lets them
//! through); the page then asks for the key and sends it with each API call.

use super::error::ApiError;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// One embedded file: name under `/console/`, content type, bytes.
type Asset = (&'static str, &'static str, &'static [u8]);

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: &[u8] = include_bytes!("../../web/index.html");

/// The files under `/console/`. uPlot is the pinned, checksum-verified copy of
/// `scripts/vendor-uplot`.
const ASSETS: &[Asset] = &[
    ("console.js", JS, include_bytes!("../../web/console.js")),
    ("api.js", JS, include_bytes!("../../web/api.js")),
    ("charts.js", JS, include_bytes!("../../web/charts.js")),
    ("console.css", CSS, include_bytes!("../../web/console.css")),
    ("uPlot.esm.js", JS, include_bytes!("../../web/vendor/uplot/uPlot.esm.js")),
    ("uPlot.min.css", CSS, include_bytes!("../../web/vendor/uplot/uPlot.min.css")),
    ("uPlot.LICENSE.txt", "text/plain; charset=utf-8", include_bytes!("../../web/vendor/uplot/LICENSE")),
];

/// Only this origin's own files and API: the page works air-gapped and a stray CDN reference
/// would fail loudly in the browser tests. uPlot sets inline styles, hence `'unsafe-inline'`
/// for styles only.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'self'";

fn file(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files, revalidated on each load so an upgraded binary is picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

/// `GET /`: the console page.
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, body)| file(content_type, body))
        .ok_or_else(|| ApiError::not_found(&format!("console file {name:?}")))
}

/// Paths the access layer serves without a key: the page and its files.
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path.strip_prefix("/console/").is_some_and(|rest| !rest.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_open_and_nothing_else_is() {
        assert!(is_console_path("/"));
        assert!(is_console_path("/console/console.js"));
        assert!(!is_console_path("/console/a/b"));
        assert!(!is_console_path("/computations"));
        assert!(!is_console_path("/consolex"));
    }

    /// The embedded chart library is the copy `scripts/vendor-uplot` verified against npm.
    #[test]
    fn vendored_uplot_matches_its_recorded_checksums() {
        use sha2::{Digest, Sha256};
        let sums = include_str!("../../web/vendor/uplot/SHA256SUMS");
        let embedded = |file: &str| {
            let name = if file == "LICENSE" { "uPlot.LICENSE.txt" } else { file };
            ASSETS.iter().find(|(n, _, _)| *n == name).unwrap_or_else(|| panic!("{name} embedded")).2
        };
        let mut checked = 0;
        for line in sums.lines() {
            let (sum, file) = line.split_once("  ").expect("sha256sum format");
            let actual: String = Sha256::digest(embedded(file)).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(actual, sum, "{file}");
            checked += 1;
        }
        assert_eq!(checked, 3);
    }

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let page = std::str::from_utf8(INDEX).unwrap();
        let mut referenced: Vec<&str> = page.split("\"console/").skip(1).filter_map(|s| s.split('"').next()).collect();
        for (name, _, body) in ASSETS.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            let text = std::str::from_utf8(body).unwrap();
            referenced.extend(text.split("from \"./").skip(1).filter_map(|s| s.split('"').next()));
            if *name != "uPlot.esm.js" {
                // Relative URLs only, so the console works under a base path.
                assert!(!text.contains("://"), "{name} names an absolute URL");
                assert!(!text.contains("\"/computations") && !text.contains("`/computations"), "{name}: absolute path");
            }
        }
        assert!(!referenced.is_empty());
        for name in referenced {
            assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "{name} is referenced but not embedded");
        }
    }
}
