//! Client certificates as credentials (`SPILLWAY_TLS_CLIENT_CA`): the caller is the
//! certificate the TLS handshake verified against the client CA.

use async_trait::async_trait;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use super::{AuthContext, AuthFailure, AuthReason, Authenticator};
use crate::server::tls::PeerCertificate;

/// The scheme's name, and the `domain` of the contexts it produces.
pub const DOMAIN: &str = "mtls";
/// The longest principal taken from a certificate (the SPIFFE spec caps an id at 2048 bytes).
pub const MAX_PRINCIPAL_LEN: usize = 2048;
/// The URI scheme of a SPIFFE id.
const SPIFFE_SCHEME: &str = "spiffe://";

/// Authenticates callers by the client certificate of their TLS connection (the
/// [`PeerCertificate`] the serve loop attaches to each request).
///
/// The principal is the certificate's SPIFFE id (its `spiffe://` URI SAN; an X.509-SVID has
/// exactly one, so two are refused) or, without one, its subject CN. The claims are
/// `subject_dn`, `issuer_dn`, `serial` (hex), `not_valid_after` (Unix seconds),
/// `sha256_fingerprint` (hex of the DER) and `spiffe_id` when there is one. No certificate:
/// `Ok(None)` (another scheme may vouch, or the gate answers `missing_credential`).
///
/// Chain verification is the handshake's job; this checks only that the certificate is
/// still within its validity window, since a kept-alive connection can outlive it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCertificates;

impl ClientCertificates {
    /// The authenticator.
    pub fn new() -> Self {
        ClientCertificates
    }
}

#[async_trait]
impl Authenticator for ClientCertificates {
    fn name(&self) -> &str {
        DOMAIN
    }

    async fn authenticate(
        &self,
        request: &http::request::Parts,
    ) -> Result<Option<AuthContext>, AuthFailure> {
        let Some(peer) = request.extensions.get::<PeerCertificate>() else {
            return Ok(None);
        };
        identify(peer, ASN1Time::now()).map(Some)
    }
}

/// The caller a verified certificate names, as of `now`.
fn identify(peer: &PeerCertificate, now: ASN1Time) -> Result<AuthContext, AuthFailure> {
    let der = peer.end_entity();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| {
        AuthFailure::rejected(
            AuthReason::InvalidCredential,
            "client certificate does not parse",
        )
    })?;
    if !cert.validity().is_valid_at(now) {
        return Err(AuthFailure::rejected(
            AuthReason::ExpiredCredential,
            "client certificate outside its validity window",
        ));
    }
    let spiffe_id = spiffe_id(&cert)?;
    let principal = match &spiffe_id {
        Some(id) => id.clone(),
        None => common_name(&cert)?,
    };
    if principal.is_empty()
        || principal.len() > MAX_PRINCIPAL_LEN
        || principal.chars().any(char::is_control)
    {
        return Err(AuthFailure::rejected(
            AuthReason::InvalidCredential,
            "client certificate names no usable principal (empty, too long or control characters)",
        ));
    }
    let mut claims = Map::new();
    claims.insert("subject_dn".into(), cert.subject().to_string().into());
    claims.insert("issuer_dn".into(), cert.issuer().to_string().into());
    claims.insert("serial".into(), cert.serial.to_str_radix(16).into());
    claims.insert(
        "not_valid_after".into(),
        cert.validity().not_after.timestamp().into(),
    );
    claims.insert(
        "sha256_fingerprint".into(),
        hex::encode(Sha256::digest(der.as_ref())).into(),
    );
    if let Some(id) = spiffe_id {
        claims.insert("spiffe_id".into(), Value::String(id));
    }
    Ok(AuthContext::new(DOMAIN, principal).with_claims(claims))
}

/// The certificate's SPIFFE id: its one `spiffe://` URI SAN, if any.
fn spiffe_id(cert: &X509Certificate<'_>) -> Result<Option<String>, AuthFailure> {
    let san = cert.subject_alternative_name().map_err(|_| {
        AuthFailure::rejected(
            AuthReason::InvalidCredential,
            "client certificate has a malformed subject alternative name",
        )
    })?;
    let Some(san) = san else {
        return Ok(None);
    };
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri)
                if uri.len() >= SPIFFE_SCHEME.len()
                    && uri[..SPIFFE_SCHEME.len()].eq_ignore_ascii_case(SPIFFE_SCHEME) =>
            {
                Some(*uri)
            }
            _ => None,
        });
    let first = ids.next();
    if ids.next().is_some() {
        return Err(AuthFailure::rejected(
            AuthReason::InvalidCredential,
            "client certificate has more than one SPIFFE id",
        ));
    }
    Ok(first.map(str::to_string))
}

/// The certificate's first subject CN.
fn common_name(cert: &X509Certificate<'_>) -> Result<String, AuthFailure> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            AuthFailure::rejected(
                AuthReason::InvalidCredential,
                "client certificate has neither a SPIFFE id nor a subject CN",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, uris: &[&str]) -> PeerCertificate {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Spillway Tests");
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        let c = params.self_signed(&key).unwrap();
        PeerCertificate::new(vec![c.der().clone()]).unwrap()
    }

    fn parts_with(peer: Option<PeerCertificate>) -> http::request::Parts {
        let mut parts = http::Request::new(()).into_parts().0;
        if let Some(p) = peer {
            parts.extensions.insert(p);
        }
        parts
    }

    fn refusal(r: Result<AuthContext, AuthFailure>) -> (AuthReason, String) {
        match r {
            Err(AuthFailure::Rejected { reason, detail }) => (reason, detail),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_certificate_is_no_credential() {
        let auth = ClientCertificates::new();
        assert_eq!(auth.name(), "mtls");
        assert!(auth
            .authenticate(&parts_with(None))
            .await
            .unwrap()
            .is_none());
        assert!(auth.challenge().is_none());
    }

    #[tokio::test]
    async fn the_spiffe_id_wins_over_the_cn() {
        let id = "spiffe://example.org/ns/jobs/sa/loader";
        let peer = cert(Some("loader-cn"), &["https://example.org/x", id]);
        let ctx = ClientCertificates::new()
            .authenticate(&parts_with(Some(peer)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ctx.domain.as_deref(), Some("mtls"));
        assert!(ctx.authenticated);
        assert_eq!(ctx.principal.as_deref(), Some(id));
        assert_eq!(ctx.claim_values("spiffe_id"), vec![id]);
        let dn = ctx.claim_values("subject_dn")[0];
        assert!(dn.contains("CN=loader-cn"), "{dn}");
        assert_eq!(ctx.claim_values("sha256_fingerprint")[0].len(), 64);
        assert!(ctx.claims["not_valid_after"].as_i64().unwrap() > 0);
    }

    #[test]
    fn without_a_spiffe_id_the_cn_is_the_principal() {
        let ctx = identify(
            &cert(Some("batch-worker"), &["https://not-spiffe"]),
            ASN1Time::now(),
        )
        .unwrap();
        assert_eq!(ctx.principal.as_deref(), Some("batch-worker"));
        assert!(!ctx.claims.contains_key("spiffe_id"));
    }

    #[test]
    fn certificates_naming_no_one_or_two_ids_are_refused() {
        let (reason, detail) = refusal(identify(&cert(None, &[]), ASN1Time::now()));
        assert_eq!(reason, AuthReason::InvalidCredential);
        assert!(detail.contains("neither"), "{detail}");
        let (reason, detail) = refusal(identify(
            &cert(
                Some("x"),
                &["spiffe://a.example/one", "SPIFFE://a.example/two"],
            ),
            ASN1Time::now(),
        ));
        assert_eq!(reason, AuthReason::InvalidCredential);
        assert!(detail.contains("more than one"), "{detail}");
        let (reason, _) = refusal(identify(&cert(Some("bad\nname"), &[]), ASN1Time::now()));
        assert_eq!(reason, AuthReason::InvalidCredential);
    }

    #[test]
    fn an_expired_certificate_is_refused_as_expired() {
        // rcgen's default validity ends in 4096; judge it from the year 5000.
        let later = ASN1Time::from_timestamp(95_617_584_000).unwrap();
        let (reason, _) = refusal(identify(&cert(Some("old"), &[]), later));
        assert_eq!(reason, AuthReason::ExpiredCredential);
    }

    #[test]
    fn garbage_der_is_refused() {
        let peer = PeerCertificate::new(vec![vec![0x30, 0x03, 0x01, 0x01, 0xff].into()]).unwrap();
        let (reason, _) = refusal(identify(&peer, ASN1Time::now()));
        assert_eq!(reason, AuthReason::InvalidCredential);
        assert!(PeerCertificate::new(Vec::new()).is_none());
    }
}
