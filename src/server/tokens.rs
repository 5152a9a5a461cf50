//! Stream state tokens: everything a stateless server needs between turns, sealed.
//!
//! HTTP streams keep no server-side state; the client echoes two opaque tokens. The *call*
//! token (issued once, by `/init`) seals call-wide settings (the response budget, a dynamic
//! output schema) and a random call id. The *cursor* token (re-issued every turn) carries the
//! method's state bytes and the call id, so cursors cannot be moved between calls.
//!
//! Both are `base64(version || nonce || XChaCha20-Poly1305(key, nonce, plaintext, aad))`, as
//! the vgi-rpc reference seals its tokens (`vgi_rpc/http/server/_state_token.py`):
//! - the key is derived from the signing secret with HKDF-SHA256, one key per token kind (a
//!   call token can never open as a cursor, and the raw secret is never used as a key);
//! - the nonce is 24 random bytes per token (XChaCha's nonce is large enough for random ones);
//! - the associated data binds the token to the caller (authenticated or not, the scheme and
//!   the principal), the protocol and the method: presented by anyone else, or on another
//!   route, it fails the tag check, indistinguishable from garbage;
//! - everything else (expiry, call id, state, limits) is inside the ciphertext: a token's
//!   bytes reveal nothing but their length.
//!
//! Rotation: tokens are sealed with the current secret and opened with the current or any
//! previous one, so replicas can move to a new secret without dropping a stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use super::auth::AuthContext;

/// The envelope format; the first byte of every token, and part of its associated data. A
/// new format takes a new number, and tokens of an unknown one are refused like garbage.
const TOKEN_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const CALL_ID_LEN: usize = 16;
/// HKDF salt: fixed, so every replica sharing the secret derives the same keys.
const HKDF_SALT: &[u8] = b"spillway stream state tokens";
/// HKDF info strings: one key per use, so a key never serves two purposes.
const CALL_KEY_INFO: &[u8] = b"spillway-stream-call-key-v1";
const CURSOR_KEY_INFO: &[u8] = b"spillway-stream-cursor-key-v1";
/// Associated-data prefixes (belt and braces with the per-kind keys).
const CALL_AAD: &[u8] = b"spillway.stream.call.v1\0";
const CURSOR_AAD: &[u8] = b"spillway.stream.cursor.v1\0";
/// Largest plaintext sealed or opened: a method's state and a dynamic schema fit easily; a
/// token beyond it could not come back inline in a request anyway. Opening checks the text
/// length against it before decoding anything.
pub(crate) const MAX_TOKEN_PLAINTEXT_BYTES: usize = 16 * 1024 * 1024;
/// Longest a stream may live, whatever its cursors say.
const MAX_CALL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The longest token text accepted: the base64 of the largest envelope.
const fn max_token_chars() -> usize {
    (1 + NONCE_LEN + MAX_TOKEN_PLAINTEXT_BYTES + TAG_LEN).div_ceil(3) * 4
}

/// What a call token seals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallToken {
    /// Random per call; every cursor of the call carries it.
    pub(crate) id: [u8; CALL_ID_LEN],
    /// The response budget fixed at `/init`.
    pub(crate) lim: Option<u64>,
    /// A dynamic output schema, as IPC schema bytes.
    pub(crate) os: Option<Vec<u8>>,
    /// Expiry, unix seconds.
    pub(crate) exp: u64,
}

/// What a cursor token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CursorToken {
    /// The call this cursor belongs to.
    call: [u8; CALL_ID_LEN],
    /// The method's state.
    state: Vec<u8>,
    /// Turn number.
    seq: u64,
    /// Expiry, unix seconds.
    exp: u64,
}

/// Why a token was refused (each maps to a 400). Every failure to open a token (unknown
/// secret, another caller, another route, tampered, truncated, oversized, garbage) is
/// `BadSignature`: the answer does not say which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenError {
    Missing,
    BadSignature,
    Expired,
    WrongCall,
}

impl TokenError {
    /// The reference's wording (`_state_token.py`, `_app_stream.py`), which vgi-rpc clients
    /// may show; `WrongCall` keeps Spillway's earlier, shorter phrasing.
    pub(crate) fn message(&self) -> &'static str {
        match self {
            TokenError::Missing => "Missing state token in exchange request",
            TokenError::BadSignature => "State token signature verification failed",
            TokenError::Expired => "State token expired",
            TokenError::WrongCall => "State token does not belong to this call",
        }
    }
}

/// A token could not be issued: the state is larger than a token holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream state of {bytes} bytes exceeds the largest state token ({limit} bytes)")]
pub(crate) struct TokenTooLarge {
    pub(crate) bytes: usize,
    pub(crate) limit: usize,
}

/// Whose token, for which route: what the associated data binds.
#[derive(Clone, Copy)]
pub(crate) struct TokenScope<'a> {
    pub(crate) caller: &'a AuthContext,
    pub(crate) protocol: &'a str,
    pub(crate) method: &'a str,
}

impl TokenScope<'_> {
    /// `prefix || version || identity || protocol || method`, every variable part length
    /// prefixed so that no two scopes share an encoding.
    fn aad(&self, prefix: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(prefix.len() + 64);
        aad.extend_from_slice(prefix);
        aad.push(TOKEN_VERSION);
        if self.caller.authenticated {
            aad.push(1);
            put_bytes(
                &mut aad,
                self.caller.domain.as_deref().unwrap_or("").as_bytes(),
            );
            put_bytes(&mut aad, self.caller.principal_or_empty().as_bytes());
        } else {
            // Anonymous callers share one identity, whatever else the context says.
            aad.push(0);
        }
        put_bytes(&mut aad, self.protocol.as_bytes());
        put_bytes(&mut aad, self.method.as_bytes());
        aad
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Names and principals are far below 4 GiB; the plaintext bound keeps state below it too.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a plaintext written by this module; `None` on anything unexpected.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    }

    fn id(&mut self) -> Option<[u8; CALL_ID_LEN]> {
        self.take(CALL_ID_LEN)
            .and_then(|b| <[u8; CALL_ID_LEN]>::try_from(b).ok())
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self
            .take(4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)?;
        self.take(usize::try_from(len).ok()?)
    }

    fn end(self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// The two AEAD keys derived from one secret.
#[derive(Clone)]
struct Keys {
    call: XChaCha20Poly1305,
    cursor: XChaCha20Poly1305,
}

impl Keys {
    fn derive(secret: &[u8]) -> Keys {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), secret);
        let key = |info: &[u8]| {
            let mut okm = [0u8; 32];
            // HKDF-SHA256 expands up to 255 * 32 bytes; 32 always fits.
            #[allow(clippy::expect_used)]
            hkdf.expand(info, &mut okm)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            XChaCha20Poly1305::new(Key::from_slice(&okm))
        };
        Keys {
            call: key(CALL_KEY_INFO),
            cursor: key(CURSOR_KEY_INFO),
        }
    }
}

/// The kind of token, choosing its key and associated-data prefix.
#[derive(Clone, Copy)]
enum Kind {
    Call,
    Cursor,
}

impl Kind {
    fn key(self, keys: &Keys) -> &XChaCha20Poly1305 {
        match self {
            Kind::Call => &keys.call,
            Kind::Cursor => &keys.cursor,
        }
    }

    fn aad_prefix(self) -> &'static [u8] {
        match self {
            Kind::Call => CALL_AAD,
            Kind::Cursor => CURSOR_AAD,
        }
    }
}

/// Seals and opens tokens with the server's signing secret (and previous ones, for opening).
#[derive(Clone)]
pub(crate) struct TokenSigner {
    current: Keys,
    previous: Vec<Keys>,
    ttl: Duration,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("previous_secrets", &self.previous.len())
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
    /// Seals with `secret`, opens with `secret` or any of `previous`; `ttl` bounds the time
    /// between two turns of a stream.
    pub(crate) fn new(secret: &[u8], previous: &[Vec<u8>], ttl: Duration) -> Self {
        TokenSigner {
            current: Keys::derive(secret),
            previous: previous.iter().map(|s| Keys::derive(s)).collect(),
            ttl,
        }
    }

    fn seal(
        &self,
        kind: Kind,
        scope: &TokenScope<'_>,
        plaintext: &[u8],
    ) -> Result<String, TokenTooLarge> {
        if plaintext.len() > MAX_TOKEN_PLAINTEXT_BYTES {
            return Err(TokenTooLarge {
                bytes: plaintext.len(),
                limit: MAX_TOKEN_PLAINTEXT_BYTES,
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let aad = scope.aad(kind.aad_prefix());
        let sealed = kind
            .key(&self.current)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            // Encryption fails only beyond ChaCha's 256 GiB message limit, far above the bound.
            .map_err(|_| TokenTooLarge {
                bytes: plaintext.len(),
                limit: MAX_TOKEN_PLAINTEXT_BYTES,
            })?;
        let mut envelope = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        envelope.push(TOKEN_VERSION);
        envelope.extend_from_slice(&nonce);
        envelope.extend_from_slice(&sealed);
        Ok(B64.encode(envelope))
    }

    /// The plaintext of `token`, if one of the secrets sealed it for `scope`.
    fn open(&self, kind: Kind, scope: &TokenScope<'_>, token: &str) -> Result<Vec<u8>, TokenError> {
        let token = token.trim();
        if token.len() > max_token_chars() {
            return Err(TokenError::BadSignature);
        }
        let raw = B64.decode(token).map_err(|_| TokenError::BadSignature)?;
        if raw.len() < 1 + NONCE_LEN + TAG_LEN || raw[0] != TOKEN_VERSION {
            return Err(TokenError::BadSignature);
        }
        let (nonce, sealed) = raw[1..].split_at(NONCE_LEN);
        let aad = scope.aad(kind.aad_prefix());
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|keys| {
                kind.key(keys)
                    .decrypt(
                        XNonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: &aad,
                        },
                    )
                    .ok()
            })
            .ok_or(TokenError::BadSignature)
    }

    /// A new call token for `scope`.
    pub(crate) fn issue_call(
        &self,
        scope: &TokenScope<'_>,
        limit: Option<u64>,
        output_schema: Option<Vec<u8>>,
    ) -> Result<(String, CallToken), TokenTooLarge> {
        let mut id = [0u8; CALL_ID_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
        let call = CallToken {
            id,
            lim: limit,
            os: output_schema,
            exp: now_secs() + MAX_CALL_LIFETIME.as_secs().max(self.ttl.as_secs()),
        };
        let token = self.seal(Kind::Call, scope, &encode_call(&call))?;
        Ok((token, call))
    }

    /// Opens a call token of `scope`.
    pub(crate) fn open_call(
        &self,
        scope: &TokenScope<'_>,
        token: &str,
    ) -> Result<CallToken, TokenError> {
        let plaintext = self.open(Kind::Call, scope, token)?;
        let call = decode_call(&plaintext).ok_or(TokenError::BadSignature)?;
        if call.exp < now_secs() {
            return Err(TokenError::Expired);
        }
        Ok(call)
    }

    /// A cursor token carrying `state` for `call`.
    pub(crate) fn issue_cursor(
        &self,
        scope: &TokenScope<'_>,
        call: &CallToken,
        state: &[u8],
        seq: u64,
    ) -> Result<String, TokenTooLarge> {
        self.issue_cursor_at(scope, call, state, seq, now_secs())
    }

    fn issue_cursor_at(
        &self,
        scope: &TokenScope<'_>,
        call: &CallToken,
        state: &[u8],
        seq: u64,
        now: u64,
    ) -> Result<String, TokenTooLarge> {
        let cursor = CursorToken {
            call: call.id,
            state: state.to_vec(),
            seq,
            exp: now.saturating_add(self.ttl.as_secs()),
        };
        self.seal(Kind::Cursor, scope, &encode_cursor(&cursor))
    }

    /// Opens a cursor token of `call`; returns (state, seq).
    pub(crate) fn open_cursor(
        &self,
        scope: &TokenScope<'_>,
        token: &str,
        call: &CallToken,
    ) -> Result<(Vec<u8>, u64), TokenError> {
        let plaintext = self.open(Kind::Cursor, scope, token)?;
        let cursor = decode_cursor(&plaintext).ok_or(TokenError::BadSignature)?;
        if cursor.exp < now_secs() {
            return Err(TokenError::Expired);
        }
        if cursor.call != call.id {
            return Err(TokenError::WrongCall);
        }
        Ok((cursor.state, cursor.seq))
    }
}

/// `exp || id || lim? || os?`, options as a presence byte then the value.
fn encode_call(call: &CallToken) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + call.os.as_ref().map_or(0, Vec::len));
    out.extend_from_slice(&call.exp.to_le_bytes());
    out.extend_from_slice(&call.id);
    match call.lim {
        Some(lim) => {
            out.push(1);
            out.extend_from_slice(&lim.to_le_bytes());
        }
        None => out.push(0),
    }
    match &call.os {
        Some(os) => {
            out.push(1);
            put_bytes(&mut out, os);
        }
        None => out.push(0),
    }
    out
}

fn decode_call(plaintext: &[u8]) -> Option<CallToken> {
    let mut r = Reader(plaintext);
    let exp = r.u64()?;
    let id = r.id()?;
    let lim = match r.u8()? {
        0 => None,
        1 => Some(r.u64()?),
        _ => return None,
    };
    let os = match r.u8()? {
        0 => None,
        1 => Some(r.bytes()?.to_vec()),
        _ => return None,
    };
    r.end()?;
    Some(CallToken { id, lim, os, exp })
}

/// `exp || call id || seq || state`.
fn encode_cursor(cursor: &CursorToken) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + cursor.state.len());
    out.extend_from_slice(&cursor.exp.to_le_bytes());
    out.extend_from_slice(&cursor.call);
    out.extend_from_slice(&cursor.seq.to_le_bytes());
    put_bytes(&mut out, &cursor.state);
    out
}

fn decode_cursor(plaintext: &[u8]) -> Option<CursorToken> {
    let mut r = Reader(plaintext);
    let exp = r.u64()?;
    let call = r.id()?;
    let seq = r.u64()?;
    let state = r.bytes()?.to_vec();
    r.end()?;
    Some(CursorToken {
        call,
        state,
        seq,
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"current-secret-0123456789abcdef-0123456789";
    const OLD: &[u8] = b"previous-secret-0123456789abcdef-012345678";

    fn signer() -> TokenSigner {
        TokenSigner::new(SECRET, &[], Duration::from_secs(60))
    }

    fn alice() -> AuthContext {
        AuthContext::new("bearer", "alice")
    }

    fn scope<'a>(caller: &'a AuthContext, protocol: &'a str, method: &'a str) -> TokenScope<'a> {
        TokenScope {
            caller,
            protocol,
            method,
        }
    }

    /// A call token and a cursor of it, for alice on P.m.
    fn pair(s: &TokenSigner, caller: &AuthContext, state: &[u8]) -> (String, CallToken, String) {
        let sc = scope(caller, "P", "m");
        let (call_token, call) = s
            .issue_call(&sc, Some(1000), Some(b"schema".to_vec()))
            .unwrap();
        let cursor = s.issue_cursor(&sc, &call, state, 3).unwrap();
        (call_token, call, cursor)
    }

    #[test]
    fn tokens_round_trip_and_bind_to_their_call() {
        let s = signer();
        let a = alice();
        let sc = scope(&a, "P", "m");
        let (call_token, call, cursor) = pair(&s, &a, b"state");
        let opened = s.open_call(&sc, &call_token).unwrap();
        assert_eq!(opened, call);
        assert_eq!(opened.lim, Some(1000));
        assert_eq!(opened.os.as_deref(), Some(&b"schema"[..]));
        assert_eq!(
            s.open_cursor(&sc, &cursor, &opened).unwrap(),
            (b"state".to_vec(), 3)
        );
        // Another call's cursor is refused.
        let (_, other, _) = pair(&s, &a, b"x");
        assert_eq!(
            s.open_cursor(&sc, &cursor, &other),
            Err(TokenError::WrongCall)
        );
        // A call token is not a cursor, nor the other way round (separate keys).
        assert_eq!(
            s.open_cursor(&sc, &call_token, &call),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.open_call(&sc, &cursor), Err(TokenError::BadSignature));
        // Fresh nonces: the same inputs never give the same token.
        assert_ne!(
            s.issue_cursor(&sc, &call, b"state", 3).unwrap(),
            s.issue_cursor(&sc, &call, b"state", 3).unwrap()
        );
    }

    #[test]
    fn a_token_of_one_caller_is_refused_for_another() {
        let s = signer();
        let a = alice();
        let (call_token, call, cursor) = pair(&s, &a, b"state");
        let bob = AuthContext::new("bearer", "bob");
        let alice_by_jwt = AuthContext::new("jwt", "alice");
        let anonymous = AuthContext::anonymous();
        for other in [&bob, &alice_by_jwt, &anonymous] {
            let sc = scope(other, "P", "m");
            assert_eq!(s.open_call(&sc, &call_token), Err(TokenError::BadSignature));
            assert_eq!(
                s.open_cursor(&sc, &cursor, &call),
                Err(TokenError::BadSignature)
            );
        }
        // Anonymous tokens are for anonymous callers only.
        let (anon_call, _, _) = pair(&s, &anonymous, b"");
        assert_eq!(
            s.open_call(&scope(&a, "P", "m"), &anon_call),
            Err(TokenError::BadSignature)
        );
        assert!(s
            .open_call(&scope(&anonymous, "P", "m"), &anon_call)
            .is_ok());
    }

    #[test]
    fn a_token_of_one_route_is_refused_on_another() {
        let s = signer();
        let a = alice();
        let (call_token, call, cursor) = pair(&s, &a, b"state");
        // Length prefixes: "P"+"m" must not collide with "Pm"+"" or ""+"Pm".
        for (p, m) in [("Q", "m"), ("P", "n"), ("Pm", ""), ("", "Pm")] {
            let sc = scope(&a, p, m);
            assert_eq!(
                s.open_call(&sc, &call_token),
                Err(TokenError::BadSignature),
                "{p}.{m}"
            );
            assert_eq!(
                s.open_cursor(&sc, &cursor, &call),
                Err(TokenError::BadSignature),
                "{p}.{m}"
            );
        }
    }

    #[test]
    fn tampered_truncated_garbage_and_oversized_tokens_are_refused() {
        let s = signer();
        let a = alice();
        let sc = scope(&a, "P", "m");
        let (call_token, call, cursor) = pair(&s, &a, b"state");
        let raw = B64.decode(&cursor).unwrap();
        // Every single flipped bit, in the version, the nonce, the ciphertext or the tag.
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                s.open_cursor(&sc, &B64.encode(&bad), &call),
                Err(TokenError::BadSignature),
                "byte {i}"
            );
        }
        for cut in [0, 1, 1 + NONCE_LEN, raw.len() - TAG_LEN, raw.len() - 1] {
            assert_eq!(
                s.open_cursor(&sc, &B64.encode(&raw[..cut]), &call),
                Err(TokenError::BadSignature),
                "cut at {cut}"
            );
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(
            s.open_cursor(&sc, &B64.encode(&longer), &call),
            Err(TokenError::BadSignature)
        );
        for garbage in ["", "not base64!", "AAAA", &"A".repeat(4096)] {
            assert_eq!(
                s.open_cursor(&sc, garbage, &call),
                Err(TokenError::BadSignature)
            );
            assert_eq!(s.open_call(&sc, garbage), Err(TokenError::BadSignature));
        }
        // Oversized: refused on its length alone, before any decoding.
        let huge = "A".repeat(max_token_chars() + 4);
        assert_eq!(s.open_call(&sc, &huge), Err(TokenError::BadSignature));
        // An unknown version byte, even with an otherwise valid envelope.
        let mut v2 = B64.decode(&call_token).unwrap();
        v2[0] = TOKEN_VERSION + 1;
        assert_eq!(
            s.open_call(&sc, &B64.encode(&v2)),
            Err(TokenError::BadSignature)
        );
        // And the untouched tokens still open.
        assert!(s.open_cursor(&sc, &cursor, &call).is_ok());
    }

    #[test]
    fn expired_cursors_are_refused() {
        let s = TokenSigner::new(SECRET, &[], Duration::from_secs(5));
        let a = alice();
        let sc = scope(&a, "P", "m");
        let (_, call, _) = pair(&s, &a, b"");
        let stale = s
            .issue_cursor_at(&sc, &call, b"state", 1, now_secs() - 60)
            .unwrap();
        assert_eq!(s.open_cursor(&sc, &stale, &call), Err(TokenError::Expired));
        let fresh = s.issue_cursor(&sc, &call, b"state", 1).unwrap();
        assert!(s.open_cursor(&sc, &fresh, &call).is_ok());
    }

    #[test]
    fn expired_call_tokens_are_refused() {
        let s = signer();
        let a = alice();
        let sc = scope(&a, "P", "m");
        let call = CallToken {
            id: [9; CALL_ID_LEN],
            lim: None,
            os: None,
            exp: now_secs() - 1,
        };
        let sealed = s.seal(Kind::Call, &sc, &encode_call(&call)).unwrap();
        assert_eq!(s.open_call(&sc, &sealed), Err(TokenError::Expired));
    }

    #[test]
    fn previous_secrets_open_tokens_and_unknown_ones_do_not() {
        let a = alice();
        let sc = scope(&a, "P", "m");
        let old = TokenSigner::new(OLD, &[], Duration::from_secs(60));
        let (call_token, call, cursor) = pair(&old, &a, b"state");
        // Rotated: current SECRET, previous OLD. The old tokens still open...
        let rotated = TokenSigner::new(
            SECRET,
            &[
                b"another-one-0123456789abcdef-0123456".to_vec(),
                OLD.to_vec(),
            ],
            Duration::from_secs(60),
        );
        let opened = rotated.open_call(&sc, &call_token).unwrap();
        assert_eq!(opened, call);
        assert_eq!(
            rotated.open_cursor(&sc, &cursor, &opened).unwrap(),
            (b"state".to_vec(), 3)
        );
        // ...and new ones are sealed with the current secret: the old server cannot open them,
        // a server that only knows the current one can.
        let next = rotated.issue_cursor(&sc, &opened, b"next", 4).unwrap();
        assert_eq!(
            old.open_cursor(&sc, &next, &opened),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            signer().open_cursor(&sc, &next, &opened).unwrap(),
            (b"next".to_vec(), 4)
        );
        // A server that knows neither secret, or only the current one, refuses the old tokens.
        let stranger = TokenSigner::new(
            b"stranger-0123456789abcdef-0123456789ab",
            &[],
            Duration::from_secs(60),
        );
        for s in [&stranger, &signer()] {
            assert_eq!(s.open_call(&sc, &call_token), Err(TokenError::BadSignature));
            assert_eq!(
                s.open_cursor(&sc, &cursor, &call),
                Err(TokenError::BadSignature)
            );
        }
    }

    #[test]
    fn a_token_reveals_none_of_its_plaintext() {
        let s = signer();
        let a = AuthContext::new("bearer", "principal-name-alice");
        let sc = scope(&a, "secret.Protocol.v1", "hidden_method_name");
        let state = b"STATE-PLAINTEXT-0123456789";
        let schema = b"SCHEMA-PLAINTEXT-abcdef".to_vec();
        let (call_token, call) = s.issue_call(&sc, Some(123_456_789), Some(schema)).unwrap();
        let cursor = s.issue_cursor(&sc, &call, state, 7).unwrap();
        for token in [&call_token, &cursor] {
            let raw = B64.decode(token).unwrap();
            let text = String::from_utf8_lossy(&raw);
            for needle in [
                "STATE-PLAINTEXT",
                "SCHEMA-PLAINTEXT",
                "hidden_method_name",
                "secret.Protocol.v1",
                "principal-name-alice",
                "bearer",
            ] {
                assert!(!text.contains(needle), "{needle} visible in {token}");
                assert!(!token.contains(needle), "{needle} visible in {token}");
            }
            // Not JSON, not text: base64 of binary (random bytes may hold a `{` by chance, so
            // only the token text is checked for JSON punctuation).
            assert!(!token.contains('{') && !token.contains('"'), "{token}");
            for needle in [
                &state[..],
                &b"hidden"[..],
                &call.id[..],
                &123_456_789u64.to_le_bytes(),
            ] {
                assert!(
                    !raw.windows(needle.len()).any(|w| w == needle),
                    "plaintext bytes visible in {token}"
                );
            }
            // The state is not there under base64 either.
            assert!(!token.contains(&B64.encode(state)[..16]));
        }
    }

    #[test]
    fn oversized_state_is_refused_at_issue() {
        let s = signer();
        let a = alice();
        let sc = scope(&a, "P", "m");
        let (_, call, _) = pair(&s, &a, b"");
        let err = s
            .issue_cursor(&sc, &call, &vec![0u8; MAX_TOKEN_PLAINTEXT_BYTES], 1)
            .unwrap_err();
        assert!(err.bytes > MAX_TOKEN_PLAINTEXT_BYTES);
        assert!(err.to_string().contains("exceeds the largest state token"));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let s = TokenSigner::new(SECRET, &[OLD.to_vec()], Duration::from_secs(60));
        for shown in [format!("{s:?}"), format!("{s:#?}")] {
            assert!(shown.contains("previous_secrets"), "{shown}");
            assert!(!shown.contains("current-secret"), "{shown}");
            assert!(!shown.contains("key"), "{shown}");
        }
    }
}
