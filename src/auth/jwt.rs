//! etcd's JWT tokens (`--auth-token jwt,priv-key=FILE,sign-method=METHOD[,ttl=5m]`): the user's
//! name and the auth revision, signed, valid on every frontend that has the key until they expire.
//! A token issued before an auth change is refused with "revision of auth store is old", and the
//! client authenticates again, as with etcd.
//!
//! Methods: RS256/384/512 and PS256/384/512 (an RSA key, PKCS#1 or PKCS#8 PEM), ES256/384 (an
//! ECDSA key, PKCS#8 PEM), HS256/384/512 (the file's bytes are the secret). Every frontend signs,
//! so the private key is needed; a `pub-key` option is accepted and read (etcd's verify-only
//! members have no counterpart here).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{hmac, rand, signature};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

/// etcd's default token lifetime.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

enum Signer {
    Rsa(
        signature::RsaKeyPair,
        &'static dyn signature::RsaEncoding,
        &'static signature::RsaParameters,
    ),
    Ecdsa(
        signature::EcdsaKeyPair,
        &'static signature::EcdsaVerificationAlgorithm,
    ),
    Hmac(hmac::Key),
}

pub struct Jwt {
    method: String,
    signer: Signer,
    ttl: Duration,
    random: rand::SystemRandom,
}

impl Jwt {
    /// The provider `--auth-token` describes, once it is `jwt,…`.
    pub fn from_options(options: &str) -> Result<Jwt, String> {
        let mut method = None;
        let mut private = None;
        let mut ttl = DEFAULT_TTL;
        for option in options.split(',').skip(1) {
            let (name, value) = option
                .split_once('=')
                .ok_or_else(|| format!("JWT option {option:?} is not name=value"))?;
            let read = |path: &str| {
                std::fs::read(path).map_err(|e| format!("cannot read the JWT key {path}: {e}"))
            };
            match name {
                "sign-method" => method = Some(value.to_owned()),
                "priv-key" => private = Some(read(value)?),
                "pub-key" => {
                    read(value)?;
                }
                "ttl" => ttl = crate::duration::parse(value)?,
                other => tracing::warn!(option = other, "unknown JWT option"),
            }
        }
        let method = method.ok_or("JWT tokens need a sign-method")?;
        let private = private.ok_or(
            "JWT tokens need priv-key: every Strata frontend signs the tokens it hands out",
        )?;
        let random = rand::SystemRandom::new();
        let pem = || {
            PrivateKeyDer::from_pem_slice(&private)
                .map_err(|e| format!("the JWT key is not a PEM private key: {e:?}"))
        };
        let rsa = |encoding, parameters| -> Result<Signer, String> {
            let pair = match pem()? {
                PrivateKeyDer::Pkcs1(der) => {
                    signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
                }
                PrivateKeyDer::Pkcs8(der) => {
                    signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                }
                _ => return Err("the JWT key is not an RSA private key".to_owned()),
            }
            .map_err(|e| format!("the JWT key is not an RSA key ring can use: {e}"))?;
            Ok(Signer::Rsa(pair, encoding, parameters))
        };
        let ecdsa = |signing, verifying| -> Result<Signer, String> {
            let PrivateKeyDer::Pkcs8(der) = pem()? else {
                return Err("the JWT key is not PKCS#8: convert it \
                            (openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8)"
                    .to_owned());
            };
            let pair =
                signature::EcdsaKeyPair::from_pkcs8(signing, der.secret_pkcs8_der(), &random)
                    .map_err(|e| format!("the JWT key is not an ECDSA key of {method}: {e}"))?;
            Ok(Signer::Ecdsa(pair, verifying))
        };
        let signer = match method.as_str() {
            "RS256" => rsa(
                &signature::RSA_PKCS1_SHA256,
                &signature::RSA_PKCS1_2048_8192_SHA256,
            )?,
            "RS384" => rsa(
                &signature::RSA_PKCS1_SHA384,
                &signature::RSA_PKCS1_2048_8192_SHA384,
            )?,
            "RS512" => rsa(
                &signature::RSA_PKCS1_SHA512,
                &signature::RSA_PKCS1_2048_8192_SHA512,
            )?,
            "PS256" => rsa(
                &signature::RSA_PSS_SHA256,
                &signature::RSA_PSS_2048_8192_SHA256,
            )?,
            "PS384" => rsa(
                &signature::RSA_PSS_SHA384,
                &signature::RSA_PSS_2048_8192_SHA384,
            )?,
            "PS512" => rsa(
                &signature::RSA_PSS_SHA512,
                &signature::RSA_PSS_2048_8192_SHA512,
            )?,
            "ES256" => ecdsa(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &signature::ECDSA_P256_SHA256_FIXED,
            )?,
            "ES384" => ecdsa(
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &signature::ECDSA_P384_SHA384_FIXED,
            )?,
            "HS256" => Signer::Hmac(hmac::Key::new(hmac::HMAC_SHA256, &private)),
            "HS384" => Signer::Hmac(hmac::Key::new(hmac::HMAC_SHA384, &private)),
            "HS512" => Signer::Hmac(hmac::Key::new(hmac::HMAC_SHA512, &private)),
            other => return Err(format!("JWT sign-method {other:?} is not supported here")),
        };
        Ok(Jwt {
            method,
            signer,
            ttl,
            random,
        })
    }

    /// A token for `user` at auth revision `revision`, expiring a TTL after `now`.
    pub fn assign(&self, user: &str, revision: u64, now: SystemTime) -> Result<String, String> {
        let header = serde_json::json!({"alg": self.method, "typ": "JWT"});
        let expires = (now + self.ttl)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // Go marshals a map with its keys sorted; serde_json's map is sorted too.
        let claims = serde_json::json!({"username": user, "revision": revision, "exp": expires});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match &self.signer {
            Signer::Rsa(pair, encoding, _) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &self.random, signed.as_bytes(), &mut sig)
                    .map_err(|e| format!("cannot sign a token: {e}"))?;
                sig
            }
            Signer::Ecdsa(pair, _) => pair
                .sign(&self.random, signed.as_bytes())
                .map_err(|e| format!("cannot sign a token: {e}"))?
                .as_ref()
                .to_vec(),
            Signer::Hmac(key) => hmac::sign(key, signed.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// The user and auth revision of a token this key signed with this method, if it has an expiry
    /// and has not reached it by `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Option<(String, u64)> {
        let (signed, sig) = token.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header["alg"].as_str() != Some(&self.method) {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let valid = match &self.signer {
            Signer::Rsa(pair, _, parameters) => {
                signature::UnparsedPublicKey::new(*parameters, pair.public().as_ref())
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }
            Signer::Ecdsa(pair, algorithm) => {
                use signature::KeyPair;
                signature::UnparsedPublicKey::new(*algorithm, pair.public_key().as_ref())
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }
            Signer::Hmac(key) => hmac::verify(key, signed.as_bytes(), &sig).is_ok(),
        };
        if !valid {
            return None;
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        // Every token this provider signs expires; one without an expiry was not made by it.
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        if claims["exp"].as_f64()? <= now {
            return None;
        }
        let user = claims["username"].as_str()?.to_owned();
        let revision = claims["revision"].as_f64()? as u64;
        Some((user, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(secret: &[u8], ttl: &str) -> (Jwt, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret");
        std::fs::write(&key, secret).unwrap();
        let options = format!("jwt,priv-key={},sign-method=HS256,ttl={ttl}", key.display());
        (Jwt::from_options(&options).unwrap(), dir)
    }

    #[test]
    fn tokens_carry_the_user_and_revision_until_they_expire() {
        let (jwt, _dir) = hs256(b"secret", "10s");
        let now = SystemTime::now();
        let token = jwt.assign("alice", 7, now).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(jwt.verify(&token, now), Some(("alice".to_owned(), 7)));
        assert_eq!(jwt.verify(&token, now + Duration::from_secs(11)), None);
        // Another key's token, a changed claim, another method: refused.
        let (other, _dir) = hs256(b"other", "10s");
        assert_eq!(other.verify(&token, now), None);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(r#"{"exp":9999999999,"revision":7,"username":"root"}"#);
        assert_eq!(jwt.verify(&parts.join("."), now), None);
        // Signed with the key, but without an expiry: refused, as it would never expire.
        let claims = URL_SAFE_NO_PAD.encode(r#"{"revision":7,"username":"alice"}"#);
        let header = token.split('.').next().unwrap();
        let signed = format!("{header}.{claims}");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signed.as_bytes()));
        assert_eq!(jwt.verify(&format!("{signed}.{sig}"), now), None);
        parts[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            jwt.verify(&format!("{}.{}.", parts[0], parts[1]), now),
            None
        );
    }

    #[test]
    fn options_are_checked_at_start() {
        assert!(Jwt::from_options("jwt,sign-method=HS256").is_err());
        assert!(Jwt::from_options("jwt,priv-key=/nonexistent,sign-method=HS256").is_err());
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, b"not a pem").unwrap();
        let rsa = format!("jwt,priv-key={},sign-method=RS256", key.display());
        assert!(Jwt::from_options(&rsa).is_err());
        let unknown = format!("jwt,priv-key={},sign-method=XX1", key.display());
        assert!(Jwt::from_options(&unknown).is_err());
    }
}
