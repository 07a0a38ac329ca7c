//! Access-token verification, which the order service runs on every request.
//!
//! Run with `cargo bench -p tiffin-runtime --bench token`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use divan::Bencher;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tiffin_runtime::token::{Claims, ISSUER, Jwk, Jwks, Role, TokenVerifier};

fn main() {
    divan::main();
}

/// The DER header of a PKCS#8 Ed25519 private key (RFC 8410), followed by the
/// 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Returns a verifier and a token it accepts, signed as the auth service signs.
fn verifier_and_token() -> (TokenVerifier, String) {
    let seed = [7_u8; 32];
    let public = SigningKey::from_bytes(&seed).verifying_key();
    let jwks = Jwks {
        keys: vec![Jwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: URL_SAFE_NO_PAD.encode(public.as_bytes()),
            kid: "bench".to_owned(),
            alg: "EdDSA".to_owned(),
            usage: "sig".to_owned(),
        }],
    };

    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();

    let claims = Claims {
        sub: "0190c3a2-7d1e-7b3a-9f00-5a1b2c3d4e5f".to_owned(),
        role: Role::Customer,
        exp: now + 3_600,
        iat: now,
        iss: ISSUER.to_owned(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("bench".to_owned());
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der))
        .expect("the token signs");
    let verifier = TokenVerifier::from_jwks(&jwks).expect("the key set is valid");
    (verifier, token)
}

#[divan::bench]
fn verify_token(bencher: Bencher<'_, '_>) {
    let (verifier, token) = verifier_and_token();
    verifier.verify(&token).expect("the token is valid");
    bencher.bench(|| verifier.verify(divan::black_box(&token)));
}

#[divan::bench]
fn verify_authorization_header(bencher: Bencher<'_, '_>) {
    let (verifier, token) = verifier_and_token();
    let header = format!("Bearer {token}");
    bencher.bench(|| verifier.verify_header(divan::black_box(Some(header.as_str()))));
}
