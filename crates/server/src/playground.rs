//! The web playground at `/`: one self-contained page
//! (`assets/playground.html`, inline CSS and JS, no build step, nothing from
//! another origin) that uses the API from the browser like any client.
//!
//! Its Content-Security-Policy allows the page's one inline script by hash
//! (not `'unsafe-inline'`), requests to this origin only, images from here
//! or `data:` (charts), and nothing else; sandbox HTML (tables) is shown in
//! an `<iframe sandbox>` that inherits the same policy.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const PAGE: &str = include_str!("../assets/playground.html");

static CSP: LazyLock<String> = LazyLock::new(|| csp(PAGE));

/// The policy for `page`, whose one inline `<script>` is allowed by hash.
fn csp(page: &str) -> String {
    let start = page
        .find("<script>")
        .expect("the playground has a <script>")
        + "<script>".len();
    let end = start + page[start..].find("</script>").expect("its </script>");
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&page[start..end]));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; frame-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_inline_script_allowed_by_its_hash_and_nothing_from_elsewhere() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        let policy = csp(PAGE);
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        assert!(!policy.contains("unsafe-eval"), "{policy}");
        assert!(!policy
            .split(';')
            .any(|d| d.contains("script-src") && d.contains("unsafe-inline")));
        for external in [
            "src=\"http",
            "href=\"http",
            "@import",
            "src=\"//",
            "href=\"//",
        ] {
            assert!(!PAGE.contains(external), "the page loads {external}…");
        }
        // Untrusted output never reaches innerHTML/outerHTML/document.write.
        for sink in [
            ".innerHTML",
            ".outerHTML",
            "document.write",
            "insertAdjacentHTML",
            "eval(",
        ] {
            assert!(!PAGE.contains(sink), "the page uses {sink}");
        }
    }

    #[test]
    fn the_hash_changes_with_the_script() {
        let a = csp("<script>let a = 1;</script>");
        let b = csp("<script>let a = 2;</script>");
        assert_ne!(a, b);
    }
}
