//! Values in Redis are sealed: ChaCha20-Poly1305 (ring, the crypto rustls already links),
//! a random nonce per value, and the key prefix, upstream name and auth fingerprint as
//! associated data, so a value copied to another fleet, upstream or config does not open.
//! Each value names its key (`tp1.<key id>.<nonce+ciphertext>`), so keys can rotate: the
//! first key seals, every configured key opens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;

const FORMAT: &str = "tp1";

/// One 32-byte key and its id (the first 8 hex digits of its SHA-256).
pub struct SealKey {
    id: String,
    key: LessSafeKey,
}

impl SealKey {
    /// From the config's text: 32 bytes in base64 (`openssl rand -base64 32`).
    pub fn parse(text: &Secret) -> Result<SealKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.expose().trim())
            .map_err(|_| "must be 32 random bytes in base64 (openssl rand -base64 32)")?;
        if bytes.len() != 32 {
            return Err(format!(
                "must be 32 random bytes in base64 (openssl rand -base64 32), not {}",
                bytes.len()
            ));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let id = digest.as_ref()[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| "is not a ChaCha20-Poly1305 key".to_owned())?;
        Ok(SealKey {
            id,
            key: LessSafeKey::new(key),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum OpenError {
    #[error("not a sealed tokenproxy value")]
    Format,
    #[error("sealed with key {0}, which is not configured (store.encryption_key, store.previous_encryption_keys)")]
    UnknownKey(String),
    #[error("does not open with key {0}: another fleet, upstream or auth settings, or altered")]
    Rejected(String),
}

/// Seals with the first key, opens with any.
#[derive(Debug)]
pub struct Sealer {
    keys: Vec<SealKey>,
    random: SystemRandom,
}

impl Sealer {
    pub fn new(keys: Vec<SealKey>) -> Sealer {
        assert!(!keys.is_empty(), "the config requires an encryption key");
        Sealer {
            keys,
            random: SystemRandom::new(),
        }
    }

    pub fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the OS random source works");
        let mut sealed = plaintext.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .expect("sealing in memory cannot fail");
        let mut payload = nonce.to_vec();
        payload.extend_from_slice(&sealed);
        format!("{FORMAT}.{}.{}", key.id, URL_SAFE_NO_PAD.encode(payload))
    }

    pub fn open(&self, value: &str, context: &str) -> Result<Vec<u8>, OpenError> {
        let mut parts = value.splitn(3, '.');
        let (Some(FORMAT), Some(id), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::Format);
        };
        let key = self
            .keys
            .iter()
            .find(|key| key.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| OpenError::Format)?;
        if payload.len() < NONCE_LEN {
            return Err(OpenError::Format);
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Format)?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut sealed)
            .map_err(|_| OpenError::Rejected(id.to_owned()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealKey {
        let text = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        SealKey::parse(&Secret::new(text)).unwrap()
    }

    #[test]
    fn a_value_opens_only_in_its_own_context_and_with_a_configured_key() {
        let sealer = Sealer::new(vec![key(1)]);
        let sealed = sealer.seal(b"refresh-token-xyz", "tp:\0amm\0fp1");
        assert!(!sealed.contains("refresh-token-xyz"));
        assert_eq!(
            sealer.open(&sealed, "tp:\0amm\0fp1").unwrap(),
            b"refresh-token-xyz"
        );
        assert!(matches!(
            sealer.open(&sealed, "tp:\0bigid\0fp1"),
            Err(OpenError::Rejected(_))
        ));
        assert!(matches!(
            Sealer::new(vec![key(2)]).open(&sealed, "tp:\0amm\0fp1"),
            Err(OpenError::UnknownKey(_))
        ));
        // Rotation: a new first key seals, the old one still opens what it sealed.
        let rotated = Sealer::new(vec![key(2), key(1)]);
        assert_eq!(
            rotated.open(&sealed, "tp:\0amm\0fp1").unwrap(),
            b"refresh-token-xyz"
        );
        assert!(rotated
            .seal(b"x", "c")
            .contains(&format!(".{}.", key(2).id())));
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(sealer.open(&altered, "tp:\0amm\0fp1").is_err());
    }

    #[test]
    fn a_key_must_be_32_bytes_of_base64() {
        assert!(SealKey::parse(&Secret::new("c2hvcnQ=".to_owned())).is_err());
        assert!(SealKey::parse(&Secret::new("not base64!".to_owned())).is_err());
    }
}
