//! WeChat's message-push cryptography (消息推送), the receiving side: the SHA-1 signatures and
//! the AES-256-CBC envelope of the encrypted modes. Pure functions, which the push endpoint
//! verifies and decrypts with. The sandbox, playing WeChat, signs and encrypts with its own
//! implementation (`wechat_notify_sandbox`'s `push/seal.rs`), so each checks the other.
//!
//! The scheme (docs/wechat.md, section 5): `signature` is the lowercase hex SHA-1 of
//! the lexicographically sorted `[token, timestamp, nonce]` concatenated, and `msg_signature`
//! the same over `[token, timestamp, nonce, Encrypt]`. The AES key is the 43-character
//! EncodingAESKey plus `=`, base64-decoded (32 bytes); the IV is its first 16 bytes. The
//! plaintext is `random(16) | msg_len (u32, big-endian) | msg | appid`, padded PKCS#7-style to a
//! **32-byte** block (pad values 1..=32), which no stock 16-byte unpadder accepts: that one step
//! is written here, everything else is the `sha1`, `aes`, `cbc` and `base64` crates.

use aes::Aes256;
use base64::{
    Engine, alphabet,
    engine::{GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};
use cbc::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::NoPadding};
use sha1::{Digest, Sha1};

/// The block WeChat pads to: PKCS#7 values run from 1 to 32.
pub const PAD_BLOCK: usize = 32;
/// Characters of an EncodingAESKey.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// How an app's pushes are protected (消息加密方式), as set in the mini program's admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushMode {
    /// 明文: plaintext bodies, `signature` only.
    Plaintext,
    /// 兼容: plaintext fields and `Encrypt` both present; either is accepted.
    Compatible,
    /// 安全: `Encrypt` only, with `msg_signature`.
    Safe,
}

impl PushMode {
    /// The mode's name in configuration.
    pub fn parse(value: &str) -> Option<PushMode> {
        match value {
            "plaintext" => Some(PushMode::Plaintext),
            "compatible" => Some(PushMode::Compatible),
            "safe" => Some(PushMode::Safe),
            _ => None,
        }
    }
}

/// `sha1(sort(parts).concat())` as lowercase hex: `signature` over `[token, timestamp, nonce]`,
/// `msg_signature` over `[token, timestamp, nonce, encrypt]`.
pub fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for part in sorted {
        hasher.update(part.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// True when `given` is the signature of `parts` (case-insensitive hex), compared in constant
/// time so a forger learns nothing from how long a refusal took.
pub fn verify(given: &str, parts: &[&str]) -> bool {
    let expected = sign(parts);
    let given = given.as_bytes();
    if given.len() != expected.len() {
        return false;
    }
    expected
        .bytes()
        .zip(given)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b.to_ascii_lowercase()))
        == 0
}

/// An app's AES key, from its EncodingAESKey. `Debug` never shows it.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey([redacted])")
    }
}

impl AesKey {
    /// The key of a 43-character EncodingAESKey. The error never quotes the key.
    pub fn from_encoding_key(encoding_key: &str) -> Result<AesKey, String> {
        if encoding_key.len() != ENCODING_AES_KEY_LEN {
            return Err(format!(
                "must be {ENCODING_AES_KEY_LEN} characters, got {}",
                encoding_key.chars().count()
            ));
        }
        // WeChat's admin generates 43 random letters and digits, so the last one often carries
        // non-zero bits past the 32 bytes; WeChat's own SDKs decode it leniently.
        let lenient = GeneralPurpose::new(
            &alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let bytes = lenient
            .decode(format!("{encoding_key}="))
            .map_err(|_| "is not base64 (A-Z, a-z, 0-9, + and /)".to_owned())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "does not decode to 32 bytes".to_owned())?;
        Ok(AesKey(key))
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }
}

/// Why an `Encrypt` field could not be opened. No variant carries key or plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not base64.
    #[error("the ciphertext is not base64")]
    Base64,
    /// Empty, or not a whole number of AES blocks.
    #[error("the ciphertext is not a whole number of aes blocks")]
    Length,
    /// The last byte is not a pad value from 1 to 32, or the padding bytes disagree.
    #[error("the padding is not 32-byte pkcs#7")]
    Padding,
    /// Too short for the random prefix and the length, or the length runs past the end.
    #[error("the plaintext layout is malformed")]
    Layout,
    /// The trailing appid is not the app's.
    #[error("the message is for another appid")]
    WrongAppid,
}

/// Decrypts a base64 `Encrypt` field and returns the message, after checking it ends with
/// `appid`.
pub fn decrypt(key: &AesKey, encrypt: &str, appid: &str) -> Result<Vec<u8>, DecryptError> {
    let ciphertext = STANDARD
        .decode(encrypt.trim())
        .map_err(|_| DecryptError::Base64)?;
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(DecryptError::Length);
    }
    let plain = cbc::Decryptor::<Aes256>::new(&key.0.into(), &key.iv().into())
        .decrypt_padded_vec::<NoPadding>(&ciphertext)
        .map_err(|_| DecryptError::Length)?;
    let unpadded = unpad(&plain)?;
    let body = unpadded.get(16..).ok_or(DecryptError::Layout)?;
    let (length, rest) = body.split_first_chunk::<4>().ok_or(DecryptError::Layout)?;
    let length = u32::from_be_bytes(*length) as usize;
    if rest.len() < length {
        return Err(DecryptError::Layout);
    }
    let (message, trailing_appid) = rest.split_at(length);
    if trailing_appid != appid.as_bytes() {
        return Err(DecryptError::WrongAppid);
    }
    Ok(message.to_vec())
}

/// Removes 32-byte PKCS#7 padding: the last byte `n` (1..=32) and `n` bytes of value `n`.
fn unpad(plain: &[u8]) -> Result<&[u8], DecryptError> {
    let &last = plain.last().ok_or(DecryptError::Padding)?;
    let pad = usize::from(last);
    if !(1..=PAD_BLOCK).contains(&pad) || pad > plain.len() {
        return Err(DecryptError::Padding);
    }
    let (kept, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&byte| byte != last) {
        return Err(DecryptError::Padding);
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use cbc::cipher::BlockModeEncrypt;

    use super::*;

    /// Encrypts `message` for `appid` with the 16-byte `random` prefix, as WeChat does;
    /// answers base64 (for the round trip).
    fn encrypt(key: &AesKey, random: [u8; 16], message: &[u8], appid: &str) -> String {
        let mut plain = Vec::with_capacity(20 + message.len() + appid.len() + PAD_BLOCK);
        plain.extend_from_slice(&random);
        plain.extend_from_slice(&(message.len() as u32).to_be_bytes());
        plain.extend_from_slice(message);
        plain.extend_from_slice(appid.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.resize(plain.len() + pad, pad as u8);
        let ciphertext = cbc::Encryptor::<Aes256>::new(&key.0.into(), &key.iv().into())
            .encrypt_padded_vec::<NoPadding>(&plain);
        STANDARD.encode(ciphertext)
    }

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[test]
    fn a_round_trip_keeps_the_message_and_checks_the_appid() {
        let key = AesKey::from_encoding_key(KEY).unwrap();
        for length in [0, 1, 7, 11, 12, 43, 44, 100] {
            let message = vec![b'x'; length];
            let sealed = encrypt(&key, [7; 16], &message, "wxapp");
            assert_eq!(decrypt(&key, &sealed, "wxapp").unwrap(), message);
            assert_eq!(
                decrypt(&key, &sealed, "wxother"),
                Err(DecryptError::WrongAppid)
            );
        }
    }

    #[test]
    fn unpadding_takes_values_up_to_32_only() {
        let mut block = vec![0u8; 64];
        block[40..].fill(24);
        assert_eq!(unpad(&block).unwrap().len(), 40);
        block[63] = 33;
        assert_eq!(unpad(&block), Err(DecryptError::Padding));
        block[63] = 0;
        assert_eq!(unpad(&block), Err(DecryptError::Padding));
        block[40..].fill(24);
        block[50] = 23;
        assert_eq!(unpad(&block), Err(DecryptError::Padding));
    }

    #[test]
    fn keys_and_signatures_are_checked() {
        assert!(AesKey::from_encoding_key("short").is_err());
        assert!(AesKey::from_encoding_key(&"!".repeat(43)).is_err());
        assert!(!format!("{:?}", AesKey::from_encoding_key(KEY).unwrap()).contains("abc"));
        let signature = sign(&["token", "1700000000", "nonce"]);
        assert!(verify(&signature, &["nonce", "token", "1700000000"]));
        assert!(verify(
            &signature.to_uppercase(),
            &["token", "1700000000", "nonce"]
        ));
        assert!(!verify(&signature, &["token", "1700000001", "nonce"]));
        assert!(!verify("", &["token", "1700000000", "nonce"]));
    }
}
