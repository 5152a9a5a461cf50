//! Stream state tokens: everything a stateless server needs between turns, signed.
//!
//! HTTP streams keep no server-side state; the client echoes two opaque tokens. The *call*
//! token (issued once, by `/init`) names the protocol and method and seals call-wide settings
//! (the response budget, a dynamic output schema). The *cursor* token (re-issued every turn)
//! carries the method's state bytes and is bound to its call token, so cursors cannot be moved
//! between calls. Both are `base64(json || HMAC-SHA256(secret, domain || json))`: any replica
//! sharing the signing secret validates them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAC_LEN: usize = 32;
const CALL_DOMAIN: &[u8] = b"spillway-stream-call-v1\n";
const CURSOR_DOMAIN: &[u8] = b"spillway-stream-cursor-v1\n";
/// Longest a stream may live, whatever its cursors say.
const MAX_CALL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What a call token seals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallToken {
    /// Protocol wire name.
    pub(crate) p: String,
    /// Method name.
    pub(crate) m: String,
    /// The response budget fixed at `/init`.
    pub(crate) lim: Option<u64>,
    /// A dynamic output schema, as base64 IPC schema bytes.
    pub(crate) os: Option<String>,
    /// Expiry, unix seconds.
    pub(crate) exp: u64,
    /// Makes every call token unique.
    pub(crate) n: String,
}

/// What a cursor token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CursorToken {
    /// Binding to the call token (first 16 bytes of its sha256, hex).
    pub(crate) c: String,
    /// The method's state, base64.
    pub(crate) s: String,
    /// Turn number.
    pub(crate) seq: u64,
    /// Expiry, unix seconds.
    pub(crate) exp: u64,
}

/// Why a token was refused (each maps to a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenError {
    Missing,
    BadSignature,
    Expired,
    WrongCall,
}

impl TokenError {
    pub(crate) fn message(&self) -> &'static str {
        match self {
            TokenError::Missing => "Missing state token in exchange request",
            TokenError::BadSignature => "State token signature verification failed",
            TokenError::Expired => "State token expired",
            TokenError::WrongCall => "State token does not belong to this call",
        }
    }
}

/// Signs and verifies tokens with the server's signing secret.
#[derive(Clone)]
pub(crate) struct TokenSigner {
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenSigner {
    /// `ttl` bounds the time between two turns of a stream.
    pub(crate) fn new(key: Vec<u8>, ttl: Duration) -> Self {
        TokenSigner { key, ttl }
    }

    fn mac(&self, domain: &[u8], payload: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
        mac.update(domain);
        mac.update(payload);
        mac
    }

    fn seal<T: Serialize>(&self, domain: &[u8], value: &T) -> String {
        let mut payload = serde_json::to_vec(value).unwrap_or_default();
        let tag = self.mac(domain, &payload).finalize().into_bytes();
        payload.extend_from_slice(&tag);
        B64.encode(payload)
    }

    fn open<T: for<'de> Deserialize<'de>>(
        &self,
        domain: &[u8],
        token: &str,
    ) -> Result<T, TokenError> {
        let raw = B64
            .decode(token.trim())
            .map_err(|_| TokenError::BadSignature)?;
        if raw.len() <= MAC_LEN {
            return Err(TokenError::BadSignature);
        }
        let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
        self.mac(domain, payload)
            .verify_slice(tag)
            .map_err(|_| TokenError::BadSignature)?;
        serde_json::from_slice(payload).map_err(|_| TokenError::BadSignature)
    }

    /// A new call token.
    pub(crate) fn issue_call(
        &self,
        protocol: &str,
        method: &str,
        limit: Option<u64>,
        output_schema: Option<String>,
    ) -> String {
        let token = CallToken {
            p: protocol.to_string(),
            m: method.to_string(),
            lim: limit,
            os: output_schema,
            exp: now_secs() + MAX_CALL_LIFETIME.as_secs().max(self.ttl.as_secs()),
            n: format!("{:032x}", rand::random::<u128>()),
        };
        self.seal(CALL_DOMAIN, &token)
    }

    /// Verifies a call token for `protocol`/`method`.
    pub(crate) fn open_call(
        &self,
        token: &str,
        protocol: &str,
        method: &str,
    ) -> Result<CallToken, TokenError> {
        let call: CallToken = self.open(CALL_DOMAIN, token)?;
        if call.exp < now_secs() {
            return Err(TokenError::Expired);
        }
        if call.p != protocol || call.m != method {
            return Err(TokenError::WrongCall);
        }
        Ok(call)
    }

    fn binding(call_token: &str) -> String {
        hex::encode(&Sha256::digest(call_token.trim().as_bytes())[..16])
    }

    /// A cursor token carrying `state` for the call `call_token`.
    pub(crate) fn issue_cursor(&self, call_token: &str, state: &[u8], seq: u64) -> String {
        let token = CursorToken {
            c: Self::binding(call_token),
            s: B64.encode(state),
            seq,
            exp: now_secs() + self.ttl.as_secs(),
        };
        self.seal(CURSOR_DOMAIN, &token)
    }

    /// Verifies a cursor token of `call_token`; returns (state, seq).
    pub(crate) fn open_cursor(
        &self,
        token: &str,
        call_token: &str,
    ) -> Result<(Vec<u8>, u64), TokenError> {
        let cursor: CursorToken = self.open(CURSOR_DOMAIN, token)?;
        if cursor.exp < now_secs() {
            return Err(TokenError::Expired);
        }
        if cursor.c != Self::binding(call_token) {
            return Err(TokenError::WrongCall);
        }
        let state = B64
            .decode(&cursor.s)
            .map_err(|_| TokenError::BadSignature)?;
        Ok((state, cursor.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(vec![7u8; 32], Duration::from_secs(60))
    }

    #[test]
    fn tokens_round_trip_and_bind() {
        let s = signer();
        let call = s.issue_call("P", "m", Some(1000), None);
        let opened = s.open_call(&call, "P", "m").unwrap();
        assert_eq!(opened.lim, Some(1000));
        let cursor = s.issue_cursor(&call, b"state", 3);
        assert_eq!(
            s.open_cursor(&cursor, &call).unwrap(),
            (b"state".to_vec(), 3)
        );
        // Another call's cursor, another method, another key, tampering: all refused.
        let other = s.issue_call("P", "m", None, None);
        assert_eq!(s.open_cursor(&cursor, &other), Err(TokenError::WrongCall));
        assert_eq!(s.open_call(&call, "P", "n"), Err(TokenError::WrongCall));
        let stranger = TokenSigner::new(vec![8u8; 32], Duration::from_secs(60));
        assert_eq!(
            stranger.open_call(&call, "P", "m"),
            Err(TokenError::BadSignature)
        );
        let mut raw = B64.decode(&cursor).unwrap();
        raw[5] ^= 1;
        assert_eq!(
            s.open_cursor(&B64.encode(raw), &call),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            s.open_cursor("not base64!", &call),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.open_cursor("", &call), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_cursors_are_refused() {
        let s = TokenSigner::new(vec![7u8; 32], Duration::ZERO);
        let call = s.issue_call("P", "m", None, None);
        let token = CursorToken {
            c: TokenSigner::binding(&call),
            s: String::new(),
            seq: 1,
            exp: now_secs() - 1,
        };
        let sealed = s.seal(CURSOR_DOMAIN, &token);
        assert_eq!(s.open_cursor(&sealed, &call), Err(TokenError::Expired));
    }
}
