//! Who may use the admin API: a bearer token (`admin.token_file`), checked in constant
//! time and never logged.
//!
//! `/healthz` and `/readyz` are always open: systemd, load balancers and Kubernetes
//! probe them without credentials, and they reveal nothing but "up" and the reasons
//! for "not ready". Every other route needs `Authorization: Bearer <token>` once a
//! token is configured. Without a token the read-only routes stay open (the gateway
//! refuses to start on a non-loopback address without one) and routes that change
//! anything are refused.

use std::sync::{Arc, RwLock};

use hyper::header::{self, HeaderMap};
use subtle::ConstantTimeEq;

/// The token the admin API asks for; replaced on a configuration reload.
#[derive(Default)]
pub struct Access {
    token: RwLock<Option<Arc<[u8]>>>,
}

/// No token: reads open, changes refused (what a [`crate::Source`] that does not say
/// otherwise gets).
pub(crate) static NO_TOKEN: Access = Access {
    token: RwLock::new(None),
};

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.has_token().then_some("<set>"))
            .finish()
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A token is configured and the request did not carry it (401).
    Unauthorized,
    /// The route changes something and no token is configured at all (403).
    NoTokenConfigured,
}

impl Access {
    /// Ask for `token` (`None`: no token configured).
    pub fn new(token: Option<&str>) -> Self {
        let a = Self::default();
        a.set(token);
        a
    }

    /// Ask for `token` from now on (a reload).
    pub fn set(&self, token: Option<&str>) {
        let t = token.map(|t| Arc::from(t.as_bytes()));
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// True when a token is configured.
    pub fn has_token(&self) -> bool {
        self.token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// May a request with these headers use a route? `mutating`: the route changes
    /// the gateway's state.
    pub fn check(&self, headers: &HeaderMap, mutating: bool) -> Result<(), Denied> {
        let token = self.token.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(token) = token else {
            return if mutating {
                Err(Denied::NoTokenConfigured)
            } else {
                Ok(())
            };
        };
        let offered = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match offered {
            Some(o) if bool::from(o.as_bytes().ct_eq(&token)) => Ok(()),
            _ => Err(Denied::Unauthorized),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_token_is_needed_once_configured() {
        let a = Access::new(Some("s3cret"));
        assert_eq!(a.check(&HeaderMap::new(), false), Err(Denied::Unauthorized));
        assert_eq!(a.check(&with_auth("Bearer s3cret"), false), Ok(()));
        assert_eq!(a.check(&with_auth("bearer  s3cret "), true), Ok(()));
        assert_eq!(
            a.check(&with_auth("Bearer s3cre"), false),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            a.check(&with_auth("Bearer s3cret2"), false),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            a.check(&with_auth("Basic s3cret"), false),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            a.check(&with_auth("Bearer"), false),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn without_a_token_reads_are_open_and_changes_refused() {
        let a = Access::new(None);
        assert_eq!(a.check(&HeaderMap::new(), false), Ok(()));
        assert_eq!(
            a.check(&HeaderMap::new(), true),
            Err(Denied::NoTokenConfigured)
        );
    }

    #[test]
    fn a_reload_replaces_the_token_and_debug_never_shows_it() {
        let a = Access::new(Some("old"));
        a.set(Some("new"));
        assert_eq!(
            a.check(&with_auth("Bearer old"), false),
            Err(Denied::Unauthorized)
        );
        assert_eq!(a.check(&with_auth("Bearer new"), false), Ok(()));
        assert!(!format!("{a:?}").contains("new"));
        a.set(None);
        assert_eq!(a.check(&HeaderMap::new(), false), Ok(()));
    }
}
