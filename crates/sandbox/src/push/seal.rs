//! WeChat's side of the 消息推送 envelope: it signs every push and, in the encrypted modes,
//! seals the body. Written from WeChat's description of the scheme (docs/wechat.md, section 5:
//! the open platform's 消息加解密 technical plan), not from the service's reader, so that a push
//! the service opens shows two independent readings of the scheme agree.
//!
//! - A signature is the SHA-1, in lowercase hex, of its parts sorted as strings and joined:
//!   `signature` over the Token, `timestamp` and `nonce`; `msg_signature` over those and the
//!   `Encrypt` field.
//! - The AES key is the EncodingAESKey (43 characters) with `=` appended, base64-decoded: 32
//!   bytes, for AES-256-CBC whose IV is the key's first 16 bytes.
//! - What is encrypted is 16 random bytes, the message's length (4 bytes, network order), the
//!   message and the appid, padded PKCS#7-style to a multiple of 32 bytes (WeChat pads to 32,
//!   not to AES's 16, so the padding is added here and the cipher runs without one).

use aes::Aes256;
use base64::{
    Engine,
    alphabet::STANDARD as STANDARD_ALPHABET,
    engine::{GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};
use cbc::cipher::{BlockModeEncrypt, KeyIvInit, block_padding::NoPadding};
use sha1::{Digest, Sha1};

/// WeChat's padding block: pad bytes carry values from 1 to 32.
const PADDING_BLOCK: usize = 32;

/// How an app's pushes are protected (消息加密方式), as chosen in the mini program's admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushMode {
    /// 明文模式: the body in the clear, `signature` only.
    Plaintext,
    /// 兼容模式: the body in the clear and its `Encrypt` form side by side.
    Compatible,
    /// 安全模式: only `Encrypt`, with `msg_signature`.
    Safe,
}

impl PushMode {
    /// The mode named `plaintext`, `compatible` or `safe`.
    pub fn from_name(name: &str) -> Option<PushMode> {
        [
            ("plaintext", PushMode::Plaintext),
            ("compatible", PushMode::Compatible),
            ("safe", PushMode::Safe),
        ]
        .into_iter()
        .find_map(|(known, mode)| (known == name).then_some(mode))
    }
}

/// The signature of `parts`: SHA-1 of the parts sorted and joined, in lowercase hex.
pub(crate) fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let digest = Sha1::digest(sorted.concat().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The AES key of an app's EncodingAESKey.
#[derive(Clone)]
pub(crate) struct SealingKey {
    key: [u8; 32],
}

impl SealingKey {
    /// The key of `encoding_aes_key`: 43 characters of base64 that decode, with `=` added, to
    /// 32 bytes. The admin's generated keys often carry stray bits in the last character, which
    /// WeChat ignores, so they are ignored here too.
    pub(crate) fn new(encoding_aes_key: &str) -> Option<SealingKey> {
        if encoding_aes_key.len() != 43 {
            return None;
        }
        let engine = GeneralPurpose::new(
            &STANDARD_ALPHABET,
            GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let decoded = engine.decode(format!("{encoding_aes_key}=")).ok()?;
        Some(SealingKey {
            key: decoded.try_into().ok()?,
        })
    }

    /// `message` for `appid` sealed as WeChat's `Encrypt` field (base64), behind `random`.
    pub(crate) fn seal(&self, random: [u8; 16], message: &[u8], appid: &str) -> String {
        let length = u32::try_from(message.len()).expect("a push body is far below 4 GiB");
        let mut plain = [
            &random[..],
            &length.to_be_bytes(),
            message,
            appid.as_bytes(),
        ]
        .concat();
        let padding = PADDING_BLOCK - plain.len() % PADDING_BLOCK;
        plain.extend(std::iter::repeat_n(padding as u8, padding));
        let (iv, _) = self.key.split_at(16);
        let encryptor = cbc::Encryptor::<Aes256>::new_from_slices(&self.key, iv)
            .expect("a 32-byte key and a 16-byte iv");
        STANDARD.encode(encryptor.encrypt_padded_vec::<NoPadding>(&plain))
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use cbc::cipher::{BlockModeDecrypt, block_padding::NoPadding};

    use super::*;

    /// The example EncodingAESKey of WeChat's technical plan.
    const ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[test]
    fn a_signature_is_the_sha1_of_the_sorted_parts() {
        // Sorted: "1372623149", "1409659813", "token"; the SHA-1 of their concatenation, as
        // `printf 13726231491409659813token | sha1sum` gives it.
        let expected = "74ec3ddbfdaa9e34666e94a046804051e80c7749";
        assert_eq!(signature(&["token", "1409659813", "1372623149"]), expected);
        assert_eq!(signature(&["1372623149", "token", "1409659813"]), expected);
    }

    #[test]
    fn a_sealed_body_opens_to_random_length_message_and_appid() {
        let key = SealingKey::new(ENCODING_AES_KEY).unwrap();
        for length in [0, 1, 11, 12, 44, 100] {
            let message = vec![b'm'; length];
            let sealed = STANDARD
                .decode(key.seal([9; 16], &message, "wxappid"))
                .unwrap();
            assert_eq!(sealed.len() % PADDING_BLOCK, 0, "padded to 32 bytes");
            let plain = cbc::Decryptor::<Aes256>::new_from_slices(&key.key, &key.key[..16])
                .unwrap()
                .decrypt_padded_vec::<NoPadding>(&sealed)
                .unwrap();
            let padding = usize::from(*plain.last().unwrap());
            assert!((1..=PADDING_BLOCK).contains(&padding));
            let body = &plain[..plain.len() - padding];
            assert_eq!(&body[..16], &[9; 16]);
            assert_eq!(body[16..20], (length as u32).to_be_bytes());
            assert_eq!(&body[20..20 + length], &message[..]);
            assert_eq!(&body[20 + length..], b"wxappid");
        }
    }

    #[test]
    fn keys_are_43_characters_of_base64() {
        assert!(SealingKey::new(ENCODING_AES_KEY).is_some());
        assert!(SealingKey::new(&ENCODING_AES_KEY[1..]).is_none());
        assert!(SealingKey::new(&"!".repeat(43)).is_none());
        let key = SealingKey::new(ENCODING_AES_KEY).unwrap();
        assert!(!format!("{key:?}").contains("abc"));
        assert_eq!(PushMode::from_name("safe"), Some(PushMode::Safe));
        assert_eq!(PushMode::from_name("Safe"), None);
    }
}
