//! `GET /`: the operator console, one self-contained HTML page (inline style and
//! script, no external resources) that reads the JSON routes from the browser.
//!
//! The page holds no data, so it is served without the token; the script asks for
//! the token when a JSON route answers 401 and keeps it in the tab's sessionStorage.
//! Its Content-Security-Policy allows exactly the page's own `<style>` and `<script>`
//! (by SHA-256 hash, computed once from the embedded text so it cannot drift), fetches
//! to this origin, and nothing else.

use std::sync::LazyLock;

use ring::digest::{digest, SHA256};

/// The page, compiled into the binary.
pub(crate) const HTML: &str = include_str!("page/index.html");

/// The `Content-Security-Policy` header of the page.
pub(crate) fn content_security_policy() -> &'static str {
    static CSP: LazyLock<String> = LazyLock::new(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash_of(element_text(HTML, "script")),
            hash_of(element_text(HTML, "style")),
        )
    });
    &CSP
}

/// The text of the page's only `<tag>` element (what a browser hashes for CSP).
fn element_text<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = html.find(&open).map(|i| i + open.len());
    let end = html.find(&close);
    match (start, end) {
        (Some(s), Some(e)) if s <= e => &html[s..e],
        // The unit tests pin the page's shape; an empty text hashes to a source no
        // browser element matches, so a broken page fails closed.
        _ => "",
    }
}

/// A CSP hash source: `'sha256-<base64>'`.
fn hash_of(text: &str) -> String {
    format!(
        "'sha256-{}'",
        crate::records::base64(digest(&SHA256, text.as_bytes()).as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_style_and_one_script_and_no_outside_resources() {
        for tag in ["style", "script"] {
            assert_eq!(HTML.matches(&format!("<{tag}")).count(), 1, "<{tag}>");
            assert_eq!(HTML.matches(&format!("</{tag}>")).count(), 1, "</{tag}>");
            assert!(!element_text(HTML, tag).trim().is_empty(), "{tag}");
        }
        // Attributes the policy would block (inline handlers, style attributes) and
        // anything fetched from elsewhere (the SVG namespace is a name, not a fetch).
        let html = HTML.replace("http://www.w3.org/2000/svg", "");
        for banned in [
            " style=",
            " onclick=",
            " onload=",
            " onsubmit=",
            "http://",
            "https://",
            "//cdn",
            "@import",
            "url(",
            "eval(",
            "innerHTML",
            "console.",
            "localStorage",
        ] {
            assert!(!html.contains(banned), "the page contains {banned:?}");
        }
        assert!(HTML.contains("http://www.w3.org/2000/svg"), "SVG namespace");
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_and_script() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        // Known answer: SHA-256 of "abc" (FIPS 180-2).
        assert_eq!(
            hash_of("abc"),
            "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
        assert!(csp.contains(&format!(
            "script-src {};",
            hash_of(element_text(HTML, "script"))
        )));
        assert!(csp.contains(&format!(
            "style-src {};",
            hash_of(element_text(HTML, "style"))
        )));
        assert_eq!(element_text("<p>x</p>", "script"), "");
    }
}
