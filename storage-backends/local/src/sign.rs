//! HMAC-SHA256 signatures for the local store's URLs.
//!
//! A URL carries three query parameters: the method it is bound to, its expiry in unix seconds,
//! and a MAC over a domain-separated string of method, key and expiry. The key comes from the
//! URL path, so moving a signature to another key, method or expiry invalidates it.
//!
//! New URLs are signed with the current secret; a URL signed with a previous one still
//! verifies, so rotating the secret does not break the URLs already handed out.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use spillway_storage::{ObjectKey, PresignMethod, StorageError};

type HmacSha256 = Hmac<Sha256>;

/// Query parameter naming the method a URL is bound to.
pub(crate) const PARAM_METHOD: &str = "X-Spillway-Method";
/// Query parameter with the expiry, in unix seconds.
pub(crate) const PARAM_EXPIRES: &str = "X-Spillway-Expires";
/// Query parameter with the lowercase hex MAC.
pub(crate) const PARAM_SIGNATURE: &str = "X-Spillway-Signature";

/// Versioned so that a future format can never be confused with this one, and so that the
/// same secret used elsewhere cannot produce a MAC that is valid here.
const DOMAIN: &str = "spillway-local-v1";

/// Longest accepted expiry string: `u64::MAX` has 20 digits.
const MAX_EXPIRES_DIGITS: usize = 20;

/// Signs URL parameters with the store's secret and verifies them with it or a previous one.
pub(crate) struct Signer {
    secret: Vec<u8>,
    previous: Vec<Vec<u8>>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

/// The signature parameters of a request, not yet verified.
#[derive(Debug)]
pub(crate) struct SignedQuery {
    method: String,
    expires: String,
    signature: String,
}

fn refused(reason: &str) -> StorageError {
    StorageError::UrlRefused {
        reason: reason.to_string(),
    }
}

/// The current time in whole unix seconds (0 if the clock is before 1970).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Extracts the signature parameters from a raw query string. Unrelated parameters are ignored;
/// a repeated signature parameter is refused so that no two parsers can disagree on its value.
pub(crate) fn parse_query(query: Option<&str>) -> Result<SignedQuery, StorageError> {
    let mut method = None;
    let mut expires = None;
    let mut signature = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match name.as_ref() {
            PARAM_METHOD => &mut method,
            PARAM_EXPIRES => &mut expires,
            PARAM_SIGNATURE => &mut signature,
            _ => continue,
        };
        if slot.is_some() {
            return Err(refused("duplicate signature parameter"));
        }
        *slot = Some(value.into_owned());
    }
    match (method, expires, signature) {
        (Some(method), Some(expires), Some(signature)) => Ok(SignedQuery {
            method,
            expires,
            signature,
        }),
        _ => Err(refused("missing signature parameters")),
    }
}

impl Signer {
    /// A signer for `secret` that also accepts `previous` secrets when verifying (their
    /// lengths are checked by the store's constructor).
    pub(crate) fn new(secret: Vec<u8>, previous: Vec<Vec<u8>>) -> Self {
        Signer { secret, previous }
    }

    fn mac(
        secret: &[u8],
        method: PresignMethod,
        key: &str,
        expires: &str,
    ) -> Result<HmacSha256, StorageError> {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
            .map_err(|_| StorageError::Config("invalid hmac secret".to_string()))?;
        // Keys cannot contain '\n' and the method and expiry are fixed alphabets, so the
        // newline-joined message is unambiguous.
        mac.update(DOMAIN.as_bytes());
        mac.update(b"\n");
        mac.update(method.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.as_bytes());
        Ok(mac)
    }

    /// The lowercase hex signature of `method` on `key` until `expires` (unix seconds).
    pub(crate) fn sign(
        &self,
        method: PresignMethod,
        key: &ObjectKey,
        expires: u64,
    ) -> Result<String, StorageError> {
        let mac = Self::mac(&self.secret, method, key.as_str(), &expires.to_string())?;
        Ok(hex::encode(mac.finalize().into_bytes()))
    }

    /// Checks the parameters against `key` and returns the method they were signed for.
    ///
    /// The MAC is checked before the expiry, so an attacker learns nothing about a forged URL
    /// beyond "signature mismatch".
    pub(crate) fn verify(
        &self,
        key: &ObjectKey,
        query: &SignedQuery,
        now_unix: u64,
    ) -> Result<PresignMethod, StorageError> {
        let method = match query.method.as_str() {
            "GET" => PresignMethod::Get,
            "PUT" => PresignMethod::Put,
            _ => return Err(refused("unknown signed method")),
        };
        // Only canonical digits are accepted: the MAC covers the string as sent, and u64's
        // parser would also take a leading '+'.
        if query.expires.is_empty()
            || query.expires.len() > MAX_EXPIRES_DIGITS
            || !query.expires.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(refused("malformed expiry"));
        }
        let expires: u64 = query
            .expires
            .parse()
            .map_err(|_| refused("malformed expiry"))?;
        let signature = hex::decode(&query.signature).map_err(|_| refused("signature mismatch"))?;
        let mut verified = false;
        for secret in std::iter::once(&self.secret).chain(&self.previous) {
            // Constant time per secret; which secret matched is not observable beyond timing
            // of the count of secrets tried, which is configuration, not a secret.
            if Self::mac(secret, method, key.as_str(), &query.expires)?
                .verify_slice(&signature)
                .is_ok()
            {
                verified = true;
                break;
            }
        }
        if !verified {
            return Err(refused("signature mismatch"));
        }
        if now_unix >= expires {
            return Err(refused("url expired"));
        }
        Ok(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(vec![7u8; 32], Vec::new())
    }

    fn query(method: &str, expires: &str, signature: &str) -> SignedQuery {
        SignedQuery {
            method: method.to_string(),
            expires: expires.to_string(),
            signature: signature.to_string(),
        }
    }

    fn reason(err: StorageError) -> String {
        match err {
            StorageError::UrlRefused { reason } => reason,
            other => panic!("expected UrlRefused, got {other:?}"),
        }
    }

    #[test]
    fn valid_signature_verifies_and_reports_its_method() {
        let s = signer();
        let key = ObjectKey::parse("p/abc").unwrap();
        let sig = s.sign(PresignMethod::Put, &key, 1000).unwrap();
        assert_eq!(sig.len(), 64);
        assert!(sig
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let m = s.verify(&key, &query("PUT", "1000", &sig), 999).unwrap();
        assert_eq!(m, PresignMethod::Put);
    }

    #[test]
    fn signature_is_bound_to_key_method_expiry_and_secret() {
        let s = signer();
        let key = ObjectKey::parse("p/abc").unwrap();
        let sig = s.sign(PresignMethod::Get, &key, 1000).unwrap();
        let other_key = ObjectKey::parse("p/abd").unwrap();
        for (k, q) in [
            (&other_key, query("GET", "1000", &sig)),
            (&key, query("PUT", "1000", &sig)),
            (&key, query("GET", "1001", &sig)),
            (&key, query("GET", "01000", &sig)),
            (&key, query("GET", "1000", &sig[..62])),
            (&key, query("GET", "1000", "zz")),
        ] {
            let err = s.verify(k, &q, 0).unwrap_err();
            assert_eq!(reason(err), "signature mismatch");
        }
        let other = Signer::new(vec![8u8; 32], Vec::new());
        let err = other
            .verify(&key, &query("GET", "1000", &sig), 0)
            .unwrap_err();
        assert_eq!(reason(err), "signature mismatch");
    }

    #[test]
    fn previous_secrets_verify_while_new_urls_use_the_current_one() {
        let key = ObjectKey::parse("p/abc").unwrap();
        let old = Signer::new(vec![8u8; 32], Vec::new());
        let old_sig = old.sign(PresignMethod::Get, &key, 1000).unwrap();
        let rotated = Signer::new(vec![7u8; 32], vec![vec![9u8; 32], vec![8u8; 32]]);
        assert_eq!(
            rotated
                .verify(&key, &query("GET", "1000", &old_sig), 0)
                .unwrap(),
            PresignMethod::Get
        );
        // The previous secret keeps binding key, method and expiry.
        for q in [
            query("PUT", "1000", &old_sig),
            query("GET", "1001", &old_sig),
        ] {
            assert_eq!(
                reason(rotated.verify(&key, &q, 0).unwrap_err()),
                "signature mismatch"
            );
        }
        // And expiry still applies to URLs of a previous secret.
        assert_eq!(
            reason(
                rotated
                    .verify(&key, &query("GET", "1000", &old_sig), 1000)
                    .unwrap_err()
            ),
            "url expired"
        );
        // New URLs are signed with the current secret: what a signer without rotation makes.
        let new_sig = rotated.sign(PresignMethod::Get, &key, 1000).unwrap();
        assert_eq!(
            new_sig,
            signer().sign(PresignMethod::Get, &key, 1000).unwrap()
        );
        assert_ne!(new_sig, old_sig);
        // A signer that does not know the old secret refuses its URLs.
        assert_eq!(
            reason(
                signer()
                    .verify(&key, &query("GET", "1000", &old_sig), 0)
                    .unwrap_err()
            ),
            "signature mismatch"
        );
    }

    #[test]
    fn expiry_is_exclusive_and_checked_after_the_mac() {
        let s = signer();
        let key = ObjectKey::parse("k").unwrap();
        let sig = s.sign(PresignMethod::Get, &key, 1000).unwrap();
        assert!(s.verify(&key, &query("GET", "1000", &sig), 999).is_ok());
        let err = s
            .verify(&key, &query("GET", "1000", &sig), 1000)
            .unwrap_err();
        assert_eq!(reason(err), "url expired");
        let err = s
            .verify(&key, &query("GET", "1000", "00"), 5000)
            .unwrap_err();
        assert_eq!(reason(err), "signature mismatch");
    }

    #[test]
    fn malformed_parameters_are_refused() {
        let s = signer();
        let key = ObjectKey::parse("k").unwrap();
        for (q, why) in [
            (query("DELETE", "1", "00"), "unknown signed method"),
            (query("get", "1", "00"), "unknown signed method"),
            (query("GET", "+1", "00"), "malformed expiry"),
            (query("GET", "", "00"), "malformed expiry"),
            (
                query("GET", "99999999999999999999999", "00"),
                "malformed expiry",
            ),
        ] {
            assert_eq!(reason(s.verify(&key, &q, 0).unwrap_err()), why);
        }
    }

    #[test]
    fn query_parsing_requires_all_parameters_once() {
        assert_eq!(
            reason(parse_query(None).unwrap_err()),
            "missing signature parameters"
        );
        assert_eq!(
            reason(parse_query(Some("X-Spillway-Method=GET&X-Spillway-Expires=1")).unwrap_err()),
            "missing signature parameters"
        );
        let dup = "X-Spillway-Method=GET&X-Spillway-Expires=1&X-Spillway-Signature=a&X-Spillway-Signature=b";
        assert_eq!(
            reason(parse_query(Some(dup)).unwrap_err()),
            "duplicate signature parameter"
        );
        let ok = parse_query(Some(
            "x=1&X-Spillway-Method=GET&X-Spillway-Expires=1&X-Spillway-Signature=ab",
        ))
        .unwrap();
        assert_eq!(ok.method, "GET");
        assert_eq!(ok.expires, "1");
        assert_eq!(ok.signature, "ab");
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        assert_eq!(format!("{:?}", signer()), "Signer(<redacted>)");
        let rotated = Signer::new(vec![7u8; 32], vec![vec![8u8; 32]]);
        assert_eq!(format!("{rotated:#?}"), "Signer(<redacted>)");
    }
}
