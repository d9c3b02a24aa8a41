//! The protobuf codec of every service generated from `proto/` (build.rs sets it with
//! `codec_path`): tonic-prost's, except for a message that cannot be decoded.
//!
//! tonic-prost answers an undecodable message (a string field that is not UTF-8, malformed
//! protobuf) with INTERNAL, which looks like a server fault and makes callers retry. It is the
//! caller's fault: INVALID_ARGUMENT, with a BadRequest naming the field where prost knows it
//! (`data`, `recipients.data`). The request is logged once, on the call's span (so with its
//! request id), and counted as `invalid` under `app="unknown"`: its app was never read. The
//! request-size limit is enforced by tonic before decoding and stays OUT_OF_RANGE.
//!
//! Clients built from the same code use it too, where it only ever sees this service's answers.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use crate::{
    status::undecodable_status,
    telemetry::catalog::{MessageCounters, Outcome},
};

/// tonic-prost's codec with [`MessageDecoder`].
#[derive(Debug, Clone)]
pub struct NotifyCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for NotifyCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for NotifyCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Decodes `U` with prost; a message that does not decode is INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|error| undecodable(&error))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

fn undecodable(error: &prost::DecodeError) -> Status {
    let (field, description) = field_of(&error.to_string());
    tracing::info!(
        code = "INVALID_ARGUMENT",
        field = field.as_deref().unwrap_or_default(),
        error = %description,
        "message not sent: the request cannot be decoded"
    );
    MessageCounters::unknown_app().count(Outcome::Invalid);
    undecodable_status(field.as_deref(), &description)
}

/// The field path and the description in prost's error text. prost writes the fields it was
/// decoding innermost first, `Message.field: ` each, after a fixed prefix: `failed to decode
/// Protobuf message: Recipient.data: BatchSendRequest.recipients: invalid string value` is
/// `recipients.data` and `invalid string value`. No field when prost names none.
fn field_of(text: &str) -> (Option<String>, String) {
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(text);
    let mut fields = Vec::new();
    while let Some((entry, after)) = rest.split_once(": ") {
        let Some((message, field)) = entry.split_once('.') else {
            break;
        };
        if !is_identifier(message) || !is_identifier(field) {
            break;
        }
        fields.push(field);
        rest = after;
    }
    fields.reverse();
    let field = (!fields.is_empty()).then(|| fields.join("."));
    (field, rest.to_owned())
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prost_error_text_gives_the_field_path_outermost_first() {
        let cases = [
            (
                "failed to decode Protobuf message: SendSubscribeRequest.data: invalid string value",
                Some("data"),
                "invalid string value",
            ),
            (
                "failed to decode Protobuf message: Recipient.data: BatchSendRequest.recipients: \
                 invalid string value",
                Some("recipients.data"),
                "invalid string value",
            ),
            (
                "failed to decode Protobuf message: SendSubscribeRequest.touser: invalid wire \
                 type: Varint (expected LengthDelimited)",
                Some("touser"),
                "invalid wire type: Varint (expected LengthDelimited)",
            ),
            (
                "failed to decode Protobuf message: buffer underflow",
                None,
                "buffer underflow",
            ),
        ];
        for (text, field, description) in cases {
            let (found, rest) = field_of(text);
            assert_eq!(found.as_deref(), field, "{text}");
            assert_eq!(rest, description, "{text}");
        }
    }
}
