//! The Ed25519 key that signs access tokens, and the tokens it issues.

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest as _, Sha256};
use tiffin_runtime::token::{Claims, ISSUER, Jwk, Jwks, Role};

/// The PKCS#8 v1 DER encoding of an Ed25519 private key is this fixed prefix
/// followed by the 32-byte seed (RFC 8410, section 7, and its example in section
/// 10.3). jsonwebtoken takes EdDSA signing keys only in that form.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A signing key as the `signing_keys` table stores it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StoredKey {
    /// The key id: the key's RFC 7638 JWK thumbprint.
    pub(crate) kid: String,
    /// The 32-byte private seed, standard base64 with padding.
    pub(crate) seed: String,
    /// The public key, base64url without padding.
    pub(crate) public_x: String,
    /// Creation time, in milliseconds since the Unix epoch.
    pub(crate) created_at: i64,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("public_x", &self.public_x)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    /// Generates a new key from 32 random bytes of the operating system.
    pub(crate) fn generate(created_at: i64) -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|error| {
            anyhow::anyhow!("failed to read random bytes for a signing key: {error}")
        })?;
        let public_x = URL_SAFE_NO_PAD.encode(public_key(&seed));
        Ok(Self {
            kid: thumbprint(&public_x),
            seed: STANDARD.encode(seed),
            public_x,
            created_at,
        })
    }
}

/// Signs access tokens with one Ed25519 key and publishes its public half.
pub(crate) struct Signer {
    kid: String,
    public_x: String,
    key: EncodingKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads a stored key.
    ///
    /// # Errors
    ///
    /// Fails when the seed is not base64 of 32 bytes or does not derive the stored
    /// public key, either of which means the row was changed by hand.
    pub(crate) fn from_stored(stored: &StoredKey) -> anyhow::Result<Self> {
        let kid = &stored.kid;
        let seed = STANDARD
            .decode(&stored.seed)
            .with_context(|| format!("signing key {kid} has a seed that is not base64"))?;
        let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "signing key {kid} has a seed of {} bytes, expected 32",
                seed.len()
            )
        })?;
        let public_x = URL_SAFE_NO_PAD.encode(public_key(&seed));
        anyhow::ensure!(
            public_x == stored.public_x,
            "signing key {kid} stores public key {} but its seed derives {public_x}",
            stored.public_x
        );

        let mut der = Vec::with_capacity(PKCS8_ED25519_PREFIX.len() + seed.len());
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(&seed);
        Ok(Self {
            kid: kid.clone(),
            public_x,
            key: EncodingKey::from_ed_der(&der),
        })
    }

    /// Returns the key id written into every token header.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// Returns the JSON Web Key Set that verifies this signer's tokens.
    pub(crate) fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![Jwk {
                kty: "OKP".to_owned(),
                crv: "Ed25519".to_owned(),
                x: self.public_x.clone(),
                kid: self.kid.clone(),
                alg: "EdDSA".to_owned(),
                usage: "sig".to_owned(),
            }],
        }
    }

    /// Issues an access token for `user_id` with `role`, valid from `issued_at`
    /// (seconds since the Unix epoch) for `ttl`, rounded down to whole seconds.
    pub(crate) fn issue(
        &self,
        user_id: &str,
        role: Role,
        issued_at: u64,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let claims = Claims {
            sub: user_id.to_owned(),
            role,
            exp: issued_at + ttl.as_secs(),
            iat: issued_at,
            iss: ISSUER.to_owned(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .with_context(|| format!("failed to sign a token with key {}", self.kid))
    }
}

fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

/// Computes the RFC 7638 thumbprint of an Ed25519 public key: SHA-256 over the
/// JWK's required members (RFC 8037, section 2) in lexicographic order, without
/// whitespace, in base64url without padding.
fn thumbprint(public_x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{public_x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::EncodingKey;
    use tiffin_runtime::token::{TokenError, TokenVerifier};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn now_secs() -> u64 {
        u64::try_from(tiffin_runtime::time::now_millis() / 1000).expect("the clock is after 1970")
    }

    fn signer() -> Signer {
        let stored = StoredKey::generate(0).expect("random key");
        Signer::from_stored(&stored).expect("valid key")
    }

    fn claims(issued_at: u64, ttl: Duration) -> Claims {
        Claims {
            sub: "0190c0de-0000-7000-8000-000000000001".to_owned(),
            role: Role::Customer,
            exp: issued_at + ttl.as_secs(),
            iat: issued_at,
            iss: ISSUER.to_owned(),
        }
    }

    fn header(algorithm: Algorithm, kid: &str) -> Header {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        header
    }

    #[test]
    fn issued_token_verifies() {
        let signer = signer();
        let verifier = TokenVerifier::from_jwks(&signer.jwks()).expect("verifier");

        let token = signer
            .issue("user-1", Role::Staff, now_secs(), HOUR)
            .expect("token");

        let claims = verifier.verify(&token).expect("accepted");
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.role, Role::Staff);
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn header_carries_kid_and_eddsa() {
        let signer = signer();

        let token = signer
            .issue("user-1", Role::Customer, now_secs(), HOUR)
            .expect("token");

        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
    }

    #[test]
    fn stored_key_round_trips() {
        let stored = StoredKey::generate(0).expect("random key");

        let signer = Signer::from_stored(&stored).expect("valid key");

        assert_eq!(signer.kid(), stored.kid);
        assert_eq!(signer.jwks().keys[0].x, stored.public_x);
    }

    #[test]
    fn mismatched_public_key_is_rejected() {
        let mut stored = StoredKey::generate(0).expect("random key");
        stored.public_x = StoredKey::generate(0).expect("random key").public_x;

        let result = Signer::from_stored(&stored);

        assert!(result.is_err());
    }

    #[test]
    fn public_key_matches_rfc_8037_example() {
        // RFC 8037, appendix A.1: the private key `d` and its public key `x`.
        let seed = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("base64url");
        let seed: [u8; 32] = seed.try_into().expect("32 bytes");

        let x = URL_SAFE_NO_PAD.encode(public_key(&seed));

        assert_eq!(x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    }

    #[test]
    fn thumbprint_matches_rfc_8037_example() {
        // RFC 8037, appendix A.3: the thumbprint of the key in appendix A.2.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

        let kid = thumbprint(x);

        assert_eq!(kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn hs256_token_is_rejected() {
        let signer = signer();
        let verifier = TokenVerifier::from_jwks(&signer.jwks()).expect("verifier");
        let forged = jsonwebtoken::encode(
            &header(Algorithm::HS256, signer.kid()),
            &claims(now_secs(), HOUR),
            &EncodingKey::from_secret(b"a guessed shared secret").expect("HMAC key"),
        )
        .expect("token");

        let result = verifier.verify(&forged);

        assert_eq!(result, Err(TokenError::WrongAlgorithm("HS256".to_owned())));
    }

    #[test]
    fn other_key_token_is_rejected() {
        let signer = signer();
        let verifier = TokenVerifier::from_jwks(&signer.jwks()).expect("verifier");
        let other = self::signer();
        let forged = jsonwebtoken::encode(
            &header(Algorithm::EdDSA, signer.kid()),
            &claims(now_secs(), HOUR),
            &other.key,
        )
        .expect("token");

        let result = verifier.verify(&forged);

        assert_eq!(result, Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_token_is_rejected() {
        let signer = signer();
        let verifier = TokenVerifier::from_jwks(&signer.jwks()).expect("verifier");
        let expired = jsonwebtoken::encode(
            &header(Algorithm::EdDSA, signer.kid()),
            &claims(now_secs() - 2 * 3600, HOUR),
            &signer.key,
        )
        .expect("token");

        let result = verifier.verify(&expired);

        assert_eq!(result, Err(TokenError::Expired));
    }
}
