//! OpenID Connect ID tokens as a login credential (spec 4.1: "an ID token from a configured
//! provider; no password"). [`verify_id_token`] checks a compact JWS against the configured
//! [`OidcProvider`]s: signature, issuer, audience, expiry; only a token that passes every
//! check yields [`IdClaims`], which the AS's account store maps to an account. The AS
//! engine sees none of it: it hands the token to the daemon's `Accounts` and takes the
//! verdict.
//!
//! Contract:
//! - Only ES256 (ECDSA P-256 with SHA-256, RFC 7518 3.4) is accepted. `none`, the HMAC
//!   algorithms and everything else are refused with [`OidcError::UnsupportedAlgorithm`].
//!   RS256, which many public providers use by default, is out of scope for now: the crate
//!   carries no RSA code, so such providers must be configured to sign with ES256.
//! - The provider is chosen by the payload's `iss` (exact string match) before the
//!   signature is checked, because the issuer decides which keys to try; nothing else in
//!   the payload is looked at until a key of that issuer verified the signature.
//! - Time comes in as `now_unix` (seconds since the Unix epoch) with a `leeway_secs` for
//!   clock skew; the module reads no clock and fetches no keys. The driver loads the
//!   provider's JWKS ([`parse_jwks`]) from configuration or its own HTTPS fetch.
//! - Any input gives `Ok` or `Err`, never a panic, and a token costs at most
//!   [`MAX_TOKEN_LEN`] bytes of decoding and one signature check per candidate key.
//!
//! Not checked here: the OIDC `nonce` (it binds a token to a browser flow the AS does not
//! run; the login sequence carries no nonce to compare with) and `at_hash`/`c_hash`.

use base64ct::{Base64UrlUnpadded, Encoding};
use core::fmt;
use ntm_proto::crypto::pk::{PublicKey, Signature, SIGNATURE_LEN};
use serde_json::{Map, Value};

/// The clock skew allowed for a token's times unless configured otherwise.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;

/// The longest token accepted, in bytes. Real ID tokens are well under 2 KiB; the cap
/// bounds what an unauthenticated client can make the AS decode and parse.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The only JWS algorithm accepted.
const ES256: &str = "ES256";

/// The longest algorithm name echoed back in [`OidcError::UnsupportedAlgorithm`], so an
/// attacker-chosen header cannot fill logs.
const MAX_ALG_ECHO: usize = 32;

/// An OpenID provider the AS trusts for logins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcProvider {
    /// The issuer identifier, compared byte for byte with the token's `iss`.
    pub issuer: String,
    /// The client id the AS is registered under; the token's `aud` must contain it.
    pub audience: String,
    /// The provider's current signing keys (ES256).
    pub keys: Vec<ProviderKey>,
}

/// One ES256 signing key of a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderKey {
    /// The JWK key id, matched against the token header's `kid`.
    pub kid: Option<String>,
    /// The P-256 public key.
    pub key: PublicKey,
}

impl ProviderKey {
    /// Parses one EC P-256 JWK (RFC 7517/7518 6.2): `{"kty":"EC","crv":"P-256","x":..,
    /// "y":..}`, with optional `kid`. A key whose `alg` or `use` is present must say `ES256`
    /// and `sig`. A JWK with a private part (`d`) is refused: it belongs in no verifier's
    /// configuration.
    pub fn from_jwk(jwk_json: &str) -> Result<Self, OidcError> {
        let value: Value = serde_json::from_str(jwk_json).map_err(|_| OidcError::Malformed("JWK is not JSON"))?;
        let jwk = value.as_object().ok_or(OidcError::Malformed("JWK is not an object"))?;
        Self::from_jwk_object(jwk)
    }

    fn from_jwk_object(jwk: &Map<String, Value>) -> Result<Self, OidcError> {
        let kty = optional_str(jwk, "kty", "JWK kty")?.ok_or(OidcError::Malformed("JWK without kty"))?;
        if kty != "EC" {
            return Err(OidcError::UnsupportedAlgorithm(echo(&format!("kty {kty}"))));
        }
        let crv = optional_str(jwk, "crv", "JWK crv")?.ok_or(OidcError::Malformed("JWK without crv"))?;
        if crv != "P-256" {
            return Err(OidcError::UnsupportedAlgorithm(echo(&format!("crv {crv}"))));
        }
        if let Some(alg) = optional_str(jwk, "alg", "JWK alg")? {
            if alg != ES256 {
                return Err(OidcError::UnsupportedAlgorithm(echo(alg)));
            }
        }
        if let Some(usage) = optional_str(jwk, "use", "JWK use")? {
            if usage != "sig" {
                return Err(OidcError::Malformed("JWK use is not sig"));
            }
        }
        if jwk.contains_key("d") {
            return Err(OidcError::Malformed("JWK holds a private key"));
        }
        let x = coordinate(jwk, "x")?;
        let y = coordinate(jwk, "y")?;
        // The uncompressed SEC1 point: 0x04 || x || y.
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(0x04);
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&y);
        // from_sec1_bytes refuses points off the curve and the identity.
        let key = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| OidcError::Malformed("JWK point"))?;
        let kid = optional_str(jwk, "kid", "JWK kid")?.map(str::to_owned);
        Ok(ProviderKey { kid, key: PublicKey::from_p256(key) })
    }
}

/// Parses a JWKS document (`{"keys":[..]}`, RFC 7517 5) into the ES256 keys it holds.
///
/// Keys of other types or curves (a provider's RSA keys, say) are skipped, since a JWKS
/// commonly mixes them; an EC P-256 key that does not parse is an error, as is a document
/// with no usable key at all, so a broken configuration shows up when it is loaded rather
/// than as failed logins.
pub fn parse_jwks(jwks_json: &str) -> Result<Vec<ProviderKey>, OidcError> {
    let value: Value = serde_json::from_str(jwks_json).map_err(|_| OidcError::Malformed("JWKS is not JSON"))?;
    let keys = value
        .as_object()
        .and_then(|doc| doc.get("keys"))
        .and_then(Value::as_array)
        .ok_or(OidcError::Malformed("JWKS without a keys array"))?;
    let mut out = Vec::new();
    for key in keys {
        let jwk = key.as_object().ok_or(OidcError::Malformed("JWK is not an object"))?;
        match ProviderKey::from_jwk_object(jwk) {
            Ok(k) => out.push(k),
            Err(OidcError::UnsupportedAlgorithm(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    if out.is_empty() {
        return Err(OidcError::Malformed("JWKS holds no ES256 key"));
    }
    Ok(out)
}

/// What a verified ID token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdClaims {
    /// `iss`: the provider that signed it.
    pub issuer: String,
    /// `sub`: the account at the provider (stable; key accounts by issuer and subject).
    pub subject: String,
    /// The configured audience the token was accepted for (one of `aud`).
    pub audience: String,
    /// `email`, if the provider sent one.
    pub email: Option<String>,
    /// `email_verified`; false when absent. Only a verified address may be matched to an
    /// existing account by e-mail.
    pub email_verified: bool,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// `iat`, Unix seconds, if present.
    pub issued_at: Option<u64>,
}

/// Why a token was refused. All but [`OidcError::TooLarge`] and
/// [`OidcError::Malformed`] arise from a well-formed token that fails a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OidcError {
    /// Not a compact JWS, bad base64url or JSON, a required claim missing or mistyped (or,
    /// for JWKs, a bad key).
    Malformed(&'static str),
    /// The header's `alg` (or a JWK's type, curve or algorithm) is not ES256 on P-256. The
    /// name is echoed, cut to a few characters.
    UnsupportedAlgorithm(String),
    /// No configured provider has the token's `iss`.
    UnknownIssuer,
    /// The issuer has no key with the header's `kid` (or no keys at all).
    UnknownKey,
    /// No candidate key verifies the signature.
    BadSignature,
    /// `aud` (or `azp`) does not name the configured audience.
    WrongAudience,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the leeway).
    NotYetValid,
    /// The token is longer than [`MAX_TOKEN_LEN`].
    TooLarge,
}

impl fmt::Display for OidcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OidcError::Malformed(what) => write!(f, "malformed ID token or key: {what}"),
            OidcError::UnsupportedAlgorithm(alg) => write!(f, "unsupported algorithm {alg:?} (only ES256)"),
            OidcError::UnknownIssuer => f.write_str("ID token from an unknown issuer"),
            OidcError::UnknownKey => f.write_str("ID token signed with an unknown key"),
            OidcError::BadSignature => f.write_str("ID token signature does not verify"),
            OidcError::WrongAudience => f.write_str("ID token is for another audience"),
            OidcError::Expired => f.write_str("ID token expired"),
            OidcError::NotYetValid => f.write_str("ID token not yet valid"),
            OidcError::TooLarge => write!(f, "ID token longer than {MAX_TOKEN_LEN} bytes"),
        }
    }
}

impl std::error::Error for OidcError {}

/// Verifies a compact-serialised ES256 ID token and returns its claims.
///
/// Order: size cap, split into exactly three base64url parts (no padding), header (`alg`
/// must be ES256, no `crit`), then `iss` from the still unverified payload to choose the
/// provider, then the signature with that provider's key named by `kid` (every key of the
/// provider if the header has none), and only then audience, `exp`, `nbf`, `iat`, `sub`.
///
/// Several providers may share an issuer (one per client id, e.g. an Android and an iOS
/// app); each is tried in configuration order and the first whose key verifies the
/// signature and whose audience the token names is the one the claims report.
pub fn verify_id_token(
    token: &[u8],
    providers: &[OidcProvider],
    now_unix: u64,
    leeway_secs: u64,
) -> Result<IdClaims, OidcError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(OidcError::TooLarge);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OidcError::Malformed("not three dot-separated parts"));
    };

    let header = json_object(&decode_b64url(header_b64)?, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        Some(_) => return Err(OidcError::Malformed("header alg is not a string")),
        None => return Err(OidcError::Malformed("header without alg")),
    };
    // Refuses `none` and the HMAC family (whose "key" would be a public key) up front.
    if alg != ES256 {
        return Err(OidcError::UnsupportedAlgorithm(echo(alg)));
    }
    // RFC 7515 4.1.11: extensions listed in `crit` must be understood; we understand none.
    if header.contains_key("crit") {
        return Err(OidcError::Malformed("header has crit extensions"));
    }
    let kid = optional_str(&header, "kid", "header kid")?;

    let sig_bytes = decode_b64url(sig_b64)?;
    let signature = Signature(
        <[u8; SIGNATURE_LEN]>::try_from(sig_bytes.as_slice())
            .map_err(|_| OidcError::Malformed("signature is not 64 bytes (r || s)"))?,
    );
    // The JWS signing input is the ASCII "header.payload" exactly as sent.
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(OidcError::Malformed("not three dot-separated parts"))?;

    // Read only `iss` from the payload until the signature has verified.
    let claims = json_object(&decode_b64url(payload_b64)?, "payload")?;
    let issuer = optional_str(&claims, "iss", "iss")?.ok_or(OidcError::Malformed("no iss"))?;

    let mut verdict = OidcError::UnknownIssuer;
    let mut accepted = None;
    for provider in providers.iter().filter(|p| p.issuer == issuer) {
        match verify_signature(provider, kid, signing_input, &signature) {
            Ok(()) => {}
            Err(e) => {
                // Report the most telling failure: a verified token for another audience
                // beats a bad signature, which beats a key not found.
                if matches!(verdict, OidcError::UnknownIssuer | OidcError::UnknownKey) {
                    verdict = e;
                }
                continue;
            }
        }
        // From here the claims are the issuer's own words.
        if audience_matches(&claims, &provider.audience)? {
            accepted = Some(provider);
            break;
        }
        verdict = OidcError::WrongAudience;
    }
    let Some(provider) = accepted else {
        return Err(verdict);
    };

    let expires_at = numeric_date(&claims, "exp")?.ok_or(OidcError::Malformed("no exp"))?;
    // RFC 7519 4.1.4: the current time must be before `exp`.
    if now_unix >= expires_at.saturating_add(leeway_secs) {
        return Err(OidcError::Expired);
    }
    let not_before = numeric_date(&claims, "nbf")?;
    let issued_at = numeric_date(&claims, "iat")?;
    let latest_start = now_unix.saturating_add(leeway_secs);
    if not_before.is_some_and(|t| t > latest_start) || issued_at.is_some_and(|t| t > latest_start) {
        return Err(OidcError::NotYetValid);
    }
    let subject = optional_str(&claims, "sub", "sub")?.ok_or(OidcError::Malformed("no sub"))?;
    // OIDC Core 2: `sub` is a non-empty identifier; an empty one would name no account.
    if subject.is_empty() {
        return Err(OidcError::Malformed("empty sub"));
    }
    let email = optional_str(&claims, "email", "email")?.map(str::to_owned);
    let email_verified = match claims.get("email_verified") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        // Some providers send the boolean as a string.
        Some(Value::String(s)) if s == "true" => true,
        Some(Value::String(s)) if s == "false" => false,
        Some(_) => return Err(OidcError::Malformed("email_verified is not a boolean")),
    };

    Ok(IdClaims {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        audience: provider.audience.clone(),
        email,
        email_verified,
        expires_at,
        issued_at,
    })
}

/// Checks the signature with the provider's key named by `kid`, or with each of its keys.
fn verify_signature(
    provider: &OidcProvider,
    kid: Option<&str>,
    signing_input: &[u8],
    signature: &Signature,
) -> Result<(), OidcError> {
    let mut candidates = provider.keys.iter().filter(|k| kid.is_none() || k.kid.as_deref() == kid).peekable();
    if candidates.peek().is_none() {
        return Err(OidcError::UnknownKey);
    }
    if candidates.any(|k| k.key.verify(signing_input, signature).is_ok()) {
        Ok(())
    } else {
        Err(OidcError::BadSignature)
    }
}

/// RFC 7519 4.1.3 / OIDC Core 3.1.3.7: `aud` is a string or an array of strings and must
/// contain our client id; if `azp` is present it must be our client id too.
fn audience_matches(claims: &Map<String, Value>, audience: &str) -> Result<bool, OidcError> {
    let listed = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => {
            let mut found = false;
            for aud in auds {
                match aud {
                    Value::String(aud) => found |= aud == audience,
                    _ => return Err(OidcError::Malformed("aud entry is not a string")),
                }
            }
            found
        }
        Some(_) => return Err(OidcError::Malformed("aud is not a string or array")),
        None => return Err(OidcError::Malformed("no aud")),
    };
    let azp_ok = match optional_str(claims, "azp", "azp")? {
        Some(azp) => azp == audience,
        None => true,
    };
    Ok(listed && azp_ok)
}

/// A NumericDate claim (RFC 7519 2): seconds, possibly with a fraction, which is dropped.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, OidcError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(secs) = n.as_u64() {
                return Ok(Some(secs));
            }
            match n.as_f64() {
                // `as` saturates for floats beyond u64::MAX, and truncation is the intent.
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                _ => Err(OidcError::Malformed("date claim is negative")),
            }
        }
        Some(_) => Err(OidcError::Malformed("date claim is not a number")),
    }
}

/// A string member, absent (`None`), or an error naming `what` if of another type.
fn optional_str<'a>(obj: &'a Map<String, Value>, name: &str, what: &'static str) -> Result<Option<&'a str>, OidcError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(OidcError::Malformed(what)),
    }
}

/// A JWK coordinate: base64url of exactly 32 big-endian bytes (RFC 7518 6.2.1.2).
fn coordinate(jwk: &Map<String, Value>, name: &'static str) -> Result<[u8; 32], OidcError> {
    let b64 =
        optional_str(jwk, name, "JWK coordinate is not a string")?.ok_or(OidcError::Malformed("JWK without x or y"))?;
    let bytes = Base64UrlUnpadded::decode_vec(b64).map_err(|_| OidcError::Malformed("JWK coordinate base64url"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| OidcError::Malformed("JWK coordinate is not 32 bytes"))
}

/// Base64url without padding (RFC 7515 2); padding, other alphabets and non-canonical
/// trailing bits are refused.
fn decode_b64url(part: &[u8]) -> Result<Vec<u8>, OidcError> {
    let text = core::str::from_utf8(part).map_err(|_| OidcError::Malformed("base64url"))?;
    Base64UrlUnpadded::decode_vec(text).map_err(|_| OidcError::Malformed("base64url"))
}

fn json_object(bytes: &[u8], what: &'static str) -> Result<Map<String, Value>, OidcError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(OidcError::Malformed(what)),
    }
}

/// Cuts an attacker-supplied name to [`MAX_ALG_ECHO`] characters.
fn echo(name: &str) -> String {
    name.chars().take(MAX_ALG_ECHO).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntm_proto::crypto::pk::KeyPair;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use serde_json::json;

    const ISS: &str = "https://accounts.example.com";
    const AUD: &str = "ntmobile-as";
    const NOW: u64 = 1_700_000_000;
    const LEEWAY: u64 = 60;

    fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(seed)
    }

    fn b64(bytes: &[u8]) -> String {
        Base64UrlUnpadded::encode_string(bytes)
    }

    /// Signs `header` and `payload` as a compact JWS with ES256.
    fn sign(key: &KeyPair, header: &Value, payload: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()));
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.0))
    }

    fn header(kid: &str) -> Value {
        json!({ "alg": "ES256", "typ": "JWT", "kid": kid })
    }

    fn claims() -> Value {
        json!({
            "iss": ISS,
            "sub": "1234567890",
            "aud": AUD,
            "email": "alice@example.com",
            "email_verified": true,
            "iat": NOW - 10,
            "nbf": NOW - 10,
            "exp": NOW + 3600,
        })
    }

    struct Fixture {
        key: KeyPair,
        other: KeyPair,
        providers: Vec<OidcProvider>,
    }

    fn fixture() -> Fixture {
        let mut r = rng(1);
        let key = KeyPair::generate(&mut r);
        let spare = KeyPair::generate(&mut r);
        let other = KeyPair::generate(&mut r);
        let providers = vec![
            OidcProvider {
                issuer: "https://other.example.org".into(),
                audience: AUD.into(),
                keys: vec![ProviderKey { kid: Some("k1".into()), key: other.public() }],
            },
            OidcProvider {
                issuer: ISS.into(),
                audience: AUD.into(),
                keys: vec![
                    ProviderKey { kid: Some("k0".into()), key: spare.public() },
                    ProviderKey { kid: Some("k1".into()), key: key.public() },
                ],
            },
        ];
        Fixture { key, other, providers }
    }

    fn verify(f: &Fixture, token: &str) -> Result<IdClaims, OidcError> {
        verify_id_token(token.as_bytes(), &f.providers, NOW, LEEWAY)
    }

    fn with(mut v: Value, name: &str, value: Value) -> Value {
        if let Some(obj) = v.as_object_mut() {
            obj.insert(name.into(), value);
        }
        v
    }

    fn without(mut v: Value, name: &str) -> Value {
        if let Some(obj) = v.as_object_mut() {
            obj.remove(name);
        }
        v
    }

    #[test]
    fn valid_token_gives_its_claims() {
        let f = fixture();
        let claims = verify(&f, &sign(&f.key, &header("k1"), &claims())).unwrap();
        assert_eq!(
            claims,
            IdClaims {
                issuer: ISS.into(),
                subject: "1234567890".into(),
                audience: AUD.into(),
                email: Some("alice@example.com".into()),
                email_verified: true,
                expires_at: NOW + 3600,
                issued_at: Some(NOW - 10),
            }
        );
    }

    #[test]
    fn minimal_token_without_kid_tries_every_key_of_the_issuer() {
        let f = fixture();
        let payload = json!({ "iss": ISS, "sub": "s", "aud": [ "x", AUD ], "exp": NOW + 1 });
        let got = verify(&f, &sign(&f.key, &json!({ "alg": "ES256" }), &payload)).unwrap();
        assert_eq!(got.subject, "s");
        assert_eq!(got.email, None);
        assert!(!got.email_verified);
        assert_eq!(got.issued_at, None);
        // Fractional dates and a string email_verified, as some providers send them.
        let payload = with(with(claims(), "exp", json!((NOW + 5) as f64 + 0.5)), "email_verified", json!("true"));
        let got = verify(&f, &sign(&f.key, &header("k1"), &payload)).unwrap();
        assert_eq!(got.expires_at, NOW + 5);
        assert!(got.email_verified);
    }

    #[test]
    fn several_clients_of_one_issuer() {
        let mut f = fixture();
        let mut ios = f.providers[1].clone();
        ios.audience = "ios-app".into();
        f.providers.insert(1, ios);
        let got = verify(&f, &sign(&f.key, &header("k1"), &claims())).unwrap();
        assert_eq!(got.audience, AUD);
        let got = verify(&f, &sign(&f.key, &header("k1"), &with(claims(), "aud", json!("ios-app")))).unwrap();
        assert_eq!(got.audience, "ios-app");
        let nobody = sign(&f.key, &header("k1"), &with(claims(), "aud", json!("nobody")));
        assert_eq!(verify(&f, &nobody), Err(OidcError::WrongAudience));
        // A third client of the issuer whose keys are not the signer's comes last: the
        // verdict stays the audience, not its bad signature.
        f.providers.push(OidcProvider {
            issuer: ISS.into(),
            audience: "web".into(),
            keys: vec![ProviderKey { kid: Some("k1".into()), key: f.other.public() }],
        });
        assert_eq!(verify(&f, &nobody), Err(OidcError::WrongAudience));
        assert_eq!(verify(&f, &sign(&f.other, &header("k1"), &claims())), Err(OidcError::WrongAudience));
        assert_eq!(
            verify(&f, &sign(&f.other, &header("k1"), &with(claims(), "aud", json!("web")))).map(|c| c.audience),
            Ok("web".into())
        );
    }

    #[test]
    fn time_checks_with_leeway() {
        let f = fixture();
        let token = |name: &str, t: u64| sign(&f.key, &header("k1"), &with(claims(), name, json!(t)));
        assert_eq!(verify(&f, &token("exp", NOW - LEEWAY)), Err(OidcError::Expired));
        assert_eq!(verify(&f, &token("exp", NOW - 1000)), Err(OidcError::Expired));
        assert!(verify(&f, &token("exp", NOW - LEEWAY + 1)).is_ok());
        assert_eq!(verify(&f, &token("nbf", NOW + LEEWAY + 1)), Err(OidcError::NotYetValid));
        assert!(verify(&f, &token("nbf", NOW + LEEWAY)).is_ok());
        assert_eq!(verify(&f, &token("iat", NOW + LEEWAY + 1)), Err(OidcError::NotYetValid));
        assert!(verify(&f, &token("iat", NOW + LEEWAY)).is_ok());
        // exp is required and must be a non-negative number.
        let no_exp = sign(&f.key, &header("k1"), &without(claims(), "exp"));
        assert_eq!(verify(&f, &no_exp), Err(OidcError::Malformed("no exp")));
        for bad in [json!("tomorrow"), json!(-1), json!(null)] {
            assert!(matches!(
                verify(&f, &sign(&f.key, &header("k1"), &with(claims(), "exp", bad))),
                Err(OidcError::Malformed(_))
            ));
        }
        // Huge values saturate instead of overflowing.
        let forever = token("exp", u64::MAX);
        assert!(verify_id_token(forever.as_bytes(), &f.providers, NOW, u64::MAX).is_ok());
        assert_eq!(verify_id_token(forever.as_bytes(), &f.providers, u64::MAX, u64::MAX), Err(OidcError::Expired));
    }

    #[test]
    fn wrong_audience_string_array_and_azp() {
        let f = fixture();
        let token = |aud: Value| sign(&f.key, &header("k1"), &with(claims(), "aud", aud));
        assert_eq!(verify(&f, &token(json!("someone-else"))), Err(OidcError::WrongAudience));
        assert_eq!(verify(&f, &token(json!(["a", "b"]))), Err(OidcError::WrongAudience));
        assert_eq!(verify(&f, &token(json!([]))), Err(OidcError::WrongAudience));
        assert_eq!(verify(&f, &token(json!(AUD.to_uppercase()))), Err(OidcError::WrongAudience));
        assert!(matches!(verify(&f, &token(json!(7))), Err(OidcError::Malformed(_))));
        assert!(matches!(verify(&f, &token(json!([AUD, 7]))), Err(OidcError::Malformed(_))));
        let no_aud = sign(&f.key, &header("k1"), &without(claims(), "aud"));
        assert_eq!(verify(&f, &no_aud), Err(OidcError::Malformed("no aud")));
        let azp = |azp: &str| sign(&f.key, &header("k1"), &with(claims(), "azp", json!(azp)));
        assert_eq!(verify(&f, &azp("another-client")), Err(OidcError::WrongAudience));
        assert!(verify(&f, &azp(AUD)).is_ok());
    }

    #[test]
    fn issuer_and_key_selection() {
        let f = fixture();
        let unknown = sign(&f.key, &header("k1"), &with(claims(), "iss", json!("https://evil.example")));
        assert_eq!(verify(&f, &unknown), Err(OidcError::UnknownIssuer));
        // Issuers match exactly: no trailing slash, no case folding.
        let slash = sign(&f.key, &header("k1"), &with(claims(), "iss", json!(format!("{ISS}/"))));
        assert_eq!(verify(&f, &slash), Err(OidcError::UnknownIssuer));
        assert_eq!(
            verify_id_token(sign(&f.key, &header("k1"), &claims()).as_bytes(), &[], NOW, 0),
            Err(OidcError::UnknownIssuer)
        );
        let no_iss = sign(&f.key, &header("k1"), &without(claims(), "iss"));
        assert_eq!(verify(&f, &no_iss), Err(OidcError::Malformed("no iss")));
        assert_eq!(verify(&f, &sign(&f.key, &header("k9"), &claims())), Err(OidcError::UnknownKey));
        // The right kid, the wrong key: the spare key is not the signer.
        assert_eq!(verify(&f, &sign(&f.key, &header("k0"), &claims())), Err(OidcError::BadSignature));
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let f = fixture();
        // `other` is the key of the other issuer, under the same kid.
        assert_eq!(verify(&f, &sign(&f.other, &header("k1"), &claims())), Err(OidcError::BadSignature));
        assert_eq!(verify(&f, &sign(&f.other, &json!({ "alg": "ES256" }), &claims())), Err(OidcError::BadSignature));
    }

    #[test]
    fn tampered_token_is_refused() {
        let f = fixture();
        let token = sign(&f.key, &header("k1"), &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64(with(claims(), "sub", json!("admin")).to_string().as_bytes());
        assert_eq!(verify(&f, &format!("{}.{}.{}", parts[0], forged, parts[2])), Err(OidcError::BadSignature));
        // A flipped signature bit, and an all-zero signature (r = s = 0 is no signature).
        let mut sig = Base64UrlUnpadded::decode_vec(parts[2]).unwrap();
        sig[10] ^= 1;
        assert_eq!(verify(&f, &format!("{}.{}.{}", parts[0], parts[1], b64(&sig))), Err(OidcError::BadSignature));
        assert_eq!(verify(&f, &format!("{}.{}.{}", parts[0], parts[1], b64(&[0; 64]))), Err(OidcError::BadSignature));
        // Header swapped for one naming another kid.
        let h = b64(header("k0").to_string().as_bytes());
        assert_eq!(verify(&f, &format!("{}.{}.{}", h, parts[1], parts[2])), Err(OidcError::BadSignature));
        // A DER-encoded signature is not JOSE's r || s.
        assert_eq!(
            verify(&f, &format!("{}.{}.{}", parts[0], parts[1], b64(&[0x30; 70]))),
            Err(OidcError::Malformed("signature is not 64 bytes (r || s)"))
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let f = fixture();
        let payload = b64(claims().to_string().as_bytes());
        for alg in ["none", "None", "HS256", "HS512", "RS256", "ES384", "PS256", "EdDSA", ""] {
            let h = b64(json!({ "alg": alg, "kid": "k1" }).to_string().as_bytes());
            for sig in ["", "c2ln"] {
                let token = format!("{h}.{payload}.{sig}");
                assert_eq!(verify(&f, &token), Err(OidcError::UnsupportedAlgorithm(alg.into())), "{alg}");
            }
        }
        // A real ES256 signature does not help a header that says otherwise.
        let token = sign(&f.key, &json!({ "alg": "HS256", "kid": "k1" }), &claims());
        assert_eq!(verify(&f, &token), Err(OidcError::UnsupportedAlgorithm("HS256".into())));
        let long = "A".repeat(1000);
        let token = sign(&f.key, &json!({ "alg": long }), &claims());
        assert_eq!(verify(&f, &token), Err(OidcError::UnsupportedAlgorithm("A".repeat(MAX_ALG_ECHO))));
        for h in [json!({}), json!({ "alg": 256 }), json!(["ES256"]), json!({ "alg": "ES256", "kid": 1 })] {
            assert!(matches!(verify(&f, &sign(&f.key, &h, &claims())), Err(OidcError::Malformed(_))), "{h}");
        }
        let crit = json!({ "alg": "ES256", "kid": "k1", "crit": ["b64"], "b64": false });
        assert!(matches!(verify(&f, &sign(&f.key, &crit, &claims())), Err(OidcError::Malformed(_))));
    }

    #[test]
    fn malformed_encodings_are_refused() {
        let f = fixture();
        let token = sign(&f.key, &header("k1"), &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let join = |a: &str, b: &str, c: &str| format!("{a}.{b}.{c}");
        let bad = [
            join(&format!("{}=", parts[0]), parts[1], parts[2]), // padding
            join(parts[0], &format!("+{}", parts[1]), parts[2]), // standard alphabet
            join(parts[0], &format!("{}*", parts[1]), parts[2]),
            join(parts[0], parts[1], &format!("{}==", parts[2])),
            join(&b64(b"not json"), parts[1], parts[2]),
            join(parts[0], &b64(b"[1,2]"), parts[2]),
            join(parts[0], &b64(b"{\"iss\":"), parts[2]),
            join("", parts[1], parts[2]),
            join(parts[0], "", parts[2]),
            join(parts[0], parts[1], ""),
            format!("{token}\n"),
            format!(" {token}"),
        ];
        for t in &bad {
            assert!(matches!(verify(&f, t), Err(OidcError::Malformed(_))), "{t}");
        }
        let mut invalid_utf8 = token.clone().into_bytes();
        invalid_utf8[3] = 0xff;
        assert!(matches!(verify_id_token(&invalid_utf8, &f.providers, NOW, 0), Err(OidcError::Malformed(_))));
    }

    #[test]
    fn wrong_part_count_is_refused() {
        let f = fixture();
        let token = sign(&f.key, &header("k1"), &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let msg = Err(OidcError::Malformed("not three dot-separated parts"));
        assert_eq!(verify(&f, ""), msg);
        assert_eq!(verify(&f, parts[0]), msg);
        assert_eq!(verify(&f, &format!("{}.{}", parts[0], parts[1])), msg);
        assert_eq!(verify(&f, &format!("{token}.")), msg);
        assert_eq!(verify(&f, &format!("{token}.{}", parts[2])), msg);
        assert_eq!(verify(&f, ".."), Err(OidcError::Malformed("header")));
        assert_eq!(verify(&f, "...."), msg);
    }

    #[test]
    fn oversize_token_is_refused_before_decoding() {
        let f = fixture();
        let padded = with(claims(), "pad", json!("x".repeat(MAX_TOKEN_LEN)));
        assert_eq!(verify(&f, &sign(&f.key, &header("k1"), &padded)), Err(OidcError::TooLarge));
        assert_eq!(verify_id_token(&[0u8; MAX_TOKEN_LEN + 1], &f.providers, NOW, 0), Err(OidcError::TooLarge));
        // Right at the cap it is decoded (and here found malformed, not too large).
        assert!(matches!(verify_id_token(&[b'.'; MAX_TOKEN_LEN], &f.providers, NOW, 0), Err(OidcError::Malformed(_))));
    }

    #[test]
    fn missing_or_bad_claims() {
        let f = fixture();
        let t = |payload: Value| verify(&f, &sign(&f.key, &header("k1"), &payload));
        assert_eq!(t(without(claims(), "sub")), Err(OidcError::Malformed("no sub")));
        assert_eq!(t(with(claims(), "sub", json!(""))), Err(OidcError::Malformed("empty sub")));
        assert!(matches!(t(with(claims(), "sub", json!(42))), Err(OidcError::Malformed(_))));
        assert!(matches!(t(with(claims(), "email", json!(["a"]))), Err(OidcError::Malformed(_))));
        assert!(matches!(t(with(claims(), "email_verified", json!("yes"))), Err(OidcError::Malformed(_))));
        assert!(!t(with(claims(), "email_verified", json!(false))).unwrap().email_verified);
        assert!(matches!(t(with(claims(), "iss", json!(["x"]))), Err(OidcError::Malformed(_))));
        assert!(matches!(t(json!([1])), Err(OidcError::Malformed(_))));
    }

    fn jwk(key: &KeyPair, kid: &str) -> Value {
        let point = key.public().as_p256().to_encoded_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64(point.x().map(|x| x.as_slice()).unwrap_or_default()),
            "y": b64(point.y().map(|y| y.as_slice()).unwrap_or_default()),
            "kid": kid,
            "use": "sig",
            "alg": "ES256",
        })
    }

    use p256::elliptic_curve::sec1::ToEncodedPoint;

    #[test]
    fn jwk_parsing() {
        let mut r = rng(2);
        let key = KeyPair::generate(&mut r);
        let good = jwk(&key, "abc");
        let parsed = ProviderKey::from_jwk(&good.to_string()).unwrap();
        assert_eq!(parsed, ProviderKey { kid: Some("abc".into()), key: key.public() });
        let bare = without(without(without(good.clone(), "kid"), "use"), "alg");
        assert_eq!(ProviderKey::from_jwk(&bare.to_string()).unwrap(), ProviderKey { kid: None, key: key.public() });

        let unsupported =
            |v: Value| matches!(ProviderKey::from_jwk(&v.to_string()), Err(OidcError::UnsupportedAlgorithm(_)));
        assert!(unsupported(with(good.clone(), "crv", json!("P-384"))));
        assert!(unsupported(with(good.clone(), "crv", json!("secp256k1"))));
        assert!(unsupported(with(good.clone(), "kty", json!("RSA"))));
        assert!(unsupported(with(good.clone(), "alg", json!("ES384"))));

        let malformed = |v: Value| matches!(ProviderKey::from_jwk(&v.to_string()), Err(OidcError::Malformed(_)));
        // A point off the curve: y + 1.
        let mut y = Base64UrlUnpadded::decode_vec(good["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        assert!(malformed(with(good.clone(), "y", json!(b64(&y)))));
        assert!(malformed(with(good.clone(), "x", json!(b64(&[0xff; 32])))));
        assert!(malformed(with(with(good.clone(), "x", json!(b64(&[0; 32]))), "y", json!(b64(&[0; 32])))));
        assert!(malformed(with(good.clone(), "x", json!(b64(&[1; 31])))));
        assert!(malformed(with(good.clone(), "x", json!(b64(&[1; 33])))));
        assert!(malformed(with(good.clone(), "x", json!("not base64!"))));
        assert!(malformed(with(good.clone(), "x", json!(5))));
        assert!(malformed(without(good.clone(), "y")));
        assert!(malformed(without(good.clone(), "kty")));
        assert!(malformed(with(good.clone(), "use", json!("enc"))));
        assert!(malformed(with(good.clone(), "kid", json!(1))));
        assert!(malformed(with(good.clone(), "d", json!(b64(&[1; 32])))));
        assert!(matches!(ProviderKey::from_jwk("{"), Err(OidcError::Malformed(_))));
        assert!(matches!(ProviderKey::from_jwk("[]"), Err(OidcError::Malformed(_))));
    }

    #[test]
    fn jwks_parsing_and_use() {
        let mut r = rng(3);
        let (a, b) = (KeyPair::generate(&mut r), KeyPair::generate(&mut r));
        let rsa = json!({ "kty": "RSA", "kid": "r1", "alg": "RS256", "n": "AQAB", "e": "AQAB" });
        let doc = json!({ "keys": [ jwk(&a, "a"), rsa, jwk(&b, "b") ] });
        let keys = parse_jwks(&doc.to_string()).unwrap();
        assert_eq!(
            keys,
            vec![
                ProviderKey { kid: Some("a".into()), key: a.public() },
                ProviderKey { kid: Some("b".into()), key: b.public() }
            ]
        );
        let providers = [OidcProvider { issuer: ISS.into(), audience: AUD.into(), keys }];
        let token = sign(&b, &header("b"), &claims());
        assert_eq!(verify_id_token(token.as_bytes(), &providers, NOW, 0).unwrap().subject, "1234567890");

        let rsa_only = json!({ "keys": [ { "kty": "RSA", "n": "AQAB", "e": "AQAB" } ] });
        assert_eq!(parse_jwks(&rsa_only.to_string()), Err(OidcError::Malformed("JWKS holds no ES256 key")));
        assert!(matches!(parse_jwks(r#"{"keys":[]}"#), Err(OidcError::Malformed(_))));
        assert!(matches!(parse_jwks(r#"{"keys":{}}"#), Err(OidcError::Malformed(_))));
        assert!(matches!(parse_jwks(r#"{"keys":[1]}"#), Err(OidcError::Malformed(_))));
        assert!(matches!(parse_jwks("[]"), Err(OidcError::Malformed(_))));
        assert!(matches!(parse_jwks(""), Err(OidcError::Malformed(_))));
        let mut bad_point = jwk(&a, "a");
        bad_point["y"] = json!(b64(&[0; 32]));
        let doc = json!({ "keys": [ bad_point, jwk(&b, "b") ] });
        assert_eq!(parse_jwks(&doc.to_string()), Err(OidcError::Malformed("JWK point")));
    }

    #[test]
    fn errors_display() {
        assert_eq!(OidcError::Expired.to_string(), "ID token expired");
        assert!(OidcError::UnsupportedAlgorithm("none".into()).to_string().contains("\"none\""));
        let e: Box<dyn std::error::Error> = Box::new(OidcError::Malformed("x"));
        assert!(e.to_string().contains('x'));
    }

    /// Random bytes, random mutations of a valid token, and random dotted base64 never panic.
    #[test]
    fn arbitrary_input_never_panics() {
        let f = fixture();
        let valid = sign(&f.key, &header("k1"), &claims()).into_bytes();
        let mut r = rng(4);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \0\xff{}\"";
        for round in 0..3000u32 {
            let len = (r.next_u32() % 600) as usize;
            let input: Vec<u8> = match round % 3 {
                0 => {
                    let mut v = vec![0u8; len];
                    r.fill_bytes(&mut v);
                    v
                }
                1 => (0..len).map(|_| alphabet[(r.next_u32() as usize) % alphabet.len()]).collect(),
                _ => {
                    let mut v = valid.clone();
                    for _ in 0..1 + r.next_u32() % 4 {
                        let i = (r.next_u32() as usize) % v.len();
                        match r.next_u32() % 3 {
                            0 => v[i] = alphabet[(r.next_u32() as usize) % alphabet.len()],
                            1 => v.truncate(i.max(1)),
                            _ => v.insert(i, alphabet[(r.next_u32() as usize) % alphabet.len()]),
                        }
                    }
                    v
                }
            };
            let _ = verify_id_token(&input, &f.providers, NOW, LEEWAY);
            let _ = verify_id_token(&input, &f.providers, r.next_u64(), r.next_u64());
            if let Ok(s) = core::str::from_utf8(&input) {
                let _ = ProviderKey::from_jwk(s);
                let _ = parse_jwks(s);
            }
        }
        // Random JSON payloads under a valid signature exercise the claim checks.
        for _ in 0..200 {
            let mut payload = claims();
            for name in ["iss", "sub", "aud", "exp", "nbf", "iat", "email", "email_verified", "azp"] {
                let v = match r.next_u32() % 7 {
                    0 => continue,
                    1 => Value::Null,
                    2 => json!(r.next_u64()),
                    3 => json!(-(r.next_u32() as i64)),
                    4 => json!(f64::from(r.next_u32()) * 1e12),
                    5 => json!([AUD, r.next_u32()]),
                    _ => json!(AUD),
                };
                payload = with(payload, name, v);
            }
            let _ = verify(&f, &sign(&f.key, &header("k1"), &payload));
        }
    }
}
