//! The one place where building-block errors become transport statuses,
//! and statuses from other apps and runtimes become block errors. Code,
//! message, details (`grpc-status-details-bin`) and metadata survive both
//! ways.

use tonic::metadata::MetadataMap;
use weft_blocks::{BlockError, Code};

use crate::api::headers;

/// The gRPC code of a block code (the numbers are the same).
pub fn grpc_code(code: Code) -> tonic::Code {
    tonic::Code::from_i32(code.as_i32())
}

/// The block code of a gRPC code.
pub fn block_code(code: tonic::Code) -> Code {
    Code::from_i32(code as i32)
}

/// Longest error message sent, in bytes: the message travels in the
/// `grpc-message` header (percent-encoded, up to three times longer), and
/// a header past the peer's limit (16 KiB by default) would turn a clear
/// refusal into an HTTP/2 protocol error. Messages that quote a huge input
/// are cut, saying so.
pub const MAX_MESSAGE: usize = 2048;

/// `message`, cut at [`MAX_MESSAGE`] bytes (on a character boundary).
pub fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_MESSAGE {
        return message.into();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (message cut: {} bytes in all)",
        &message[..end],
        message.len()
    )
    .into()
}

/// The gRPC status a caller gets for `e`.
pub fn to_status(e: BlockError) -> tonic::Status {
    let code = grpc_code(e.code());
    match e {
        BlockError::Passthrough(p) => {
            let mut md = MetadataMap::new();
            headers::extend_metadata(&mut md, &p.metadata);
            let message = bounded(&p.message).into_owned();
            tonic::Status::with_details_and_metadata(code, message, p.details.into(), md)
        }
        other => tonic::Status::new(code, bounded(other.message()).into_owned()),
    }
}

/// A status another app or runtime answered, kept whole (its metadata
/// without the hop's own headers).
pub fn from_status(status: &tonic::Status) -> BlockError {
    BlockError::passthrough(
        block_code(status.code()),
        status.message(),
        status.details().to_vec(),
        headers::from_metadata(status.metadata()),
    )
}

/// Whether an error of type `E` is in `status`'s source chain.
pub fn caused_by<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether `status` is tonic's own client-side deadline (`grpc-timeout`)
/// firing — the call ran out of time, which is neither the peer's answer
/// nor a broken connection.
pub fn deadline_fired(status: &tonic::Status) -> bool {
    caused_by::<tonic::TimeoutExpired>(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::mesh::Header;

    #[test]
    fn passthrough_keeps_code_message_details_and_metadata() {
        let e = BlockError::passthrough(
            Code::NotFound,
            "no order 7",
            vec![8, 5, 18, 3, 1, 2, 3],
            vec![Header {
                key: "x-why".into(),
                values: vec!["gone".into()],
            }],
        );
        let s = to_status(e.clone());
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "no order 7");
        assert_eq!(s.details(), &[8, 5, 18, 3, 1, 2, 3]);
        assert_eq!(s.metadata().get("x-why").unwrap(), "gone");
        assert_eq!(from_status(&s), e);
    }

    #[test]
    fn block_errors_keep_code_and_message() {
        let s = to_status(BlockError::Aborted("etag mismatch".into()));
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Aborted, "etag mismatch")
        );
        assert!(s.details().is_empty());
    }
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = format!("key '{}' is bad", "ж".repeat(5000));
        let cut = bounded(&long);
        assert!(cut.len() < MAX_MESSAGE + 64, "{}", cut.len());
        assert!(cut.ends_with(&format!("(message cut: {} bytes in all)", long.len())));
        let s = to_status(BlockError::invalid_argument(long));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with("key 'жж"));
    }
}
