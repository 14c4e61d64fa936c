//! Splitting the backend byte stream into messages.
//!
//! The decoder checks a message's 5-byte header before anything else: an announced
//! length over [`MAX_MESSAGE_LEN`] is an error raised from the header alone, so a
//! hostile or broken peer cannot make walsink allocate. Incomplete input is `Ok(None)`,
//! not an error. `CopyData` bodies are handed out as [`Bytes`] slices of the read
//! buffer, without copying.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{ProtocolError, ServerError};

/// The largest message walsink accepts, header included. The walsender never sends
/// more than 128 KiB of WAL per message; history files and error texts are far
/// smaller. 1 MiB leaves ample room.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// One message from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendMessage {
    /// `R` with code 0.
    AuthenticationOk,
    /// `R` code 3.
    AuthenticationCleartextPassword,
    /// `R` code 5, with the salt.
    AuthenticationMd5Password([u8; 4]),
    /// `R` code 10, with the offered mechanisms.
    AuthenticationSasl(Vec<String>),
    /// `R` code 11.
    AuthenticationSaslContinue(Bytes),
    /// `R` code 12.
    AuthenticationSaslFinal(Bytes),
    /// Any other `R` code.
    AuthenticationOther(u32),
    /// `S`.
    ParameterStatus {
        /// Parameter name.
        name: String,
        /// Its value.
        value: String,
    },
    /// `K`.
    BackendKeyData,
    /// `Z`, with the transaction status byte.
    ReadyForQuery(u8),
    /// `T`, with the column names.
    RowDescription(Vec<String>),
    /// `D`, with the column values (text format), `None` for NULL.
    DataRow(Vec<Option<Bytes>>),
    /// `C`, with the command tag.
    CommandComplete(String),
    /// `I`.
    EmptyQueryResponse,
    /// `E`.
    ErrorResponse(ServerError),
    /// `N`.
    NoticeResponse(ServerError),
    /// `W`.
    CopyBothResponse,
    /// `H`.
    CopyOutResponse,
    /// `G`.
    CopyInResponse,
    /// `d`, the payload.
    CopyData(Bytes),
    /// `c`.
    CopyDone,
    /// `v`.
    NegotiateProtocolVersion,
    /// Any other message type, skipped by callers that tolerate it.
    Unknown(u8),
}

impl BackendMessage {
    /// The message type byte, for error messages.
    pub fn tag(&self) -> char {
        match self {
            BackendMessage::AuthenticationOk
            | BackendMessage::AuthenticationCleartextPassword
            | BackendMessage::AuthenticationMd5Password(_)
            | BackendMessage::AuthenticationSasl(_)
            | BackendMessage::AuthenticationSaslContinue(_)
            | BackendMessage::AuthenticationSaslFinal(_)
            | BackendMessage::AuthenticationOther(_) => 'R',
            BackendMessage::ParameterStatus { .. } => 'S',
            BackendMessage::BackendKeyData => 'K',
            BackendMessage::ReadyForQuery(_) => 'Z',
            BackendMessage::RowDescription(_) => 'T',
            BackendMessage::DataRow(_) => 'D',
            BackendMessage::CommandComplete(_) => 'C',
            BackendMessage::EmptyQueryResponse => 'I',
            BackendMessage::ErrorResponse(_) => 'E',
            BackendMessage::NoticeResponse(_) => 'N',
            BackendMessage::CopyBothResponse => 'W',
            BackendMessage::CopyOutResponse => 'H',
            BackendMessage::CopyInResponse => 'G',
            BackendMessage::CopyData(_) => 'd',
            BackendMessage::CopyDone => 'c',
            BackendMessage::NegotiateProtocolVersion => 'v',
            BackendMessage::Unknown(t) => *t as char,
        }
    }
}

/// Takes one complete message off the front of `buf`, or returns `Ok(None)` if `buf`
/// does not yet hold a whole one. On error the buffer is left as it was.
pub fn decode(buf: &mut BytesMut) -> Result<Option<BackendMessage>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..MAX_MESSAGE_LEN).contains(&len) {
        return Err(ProtocolError::BadLength {
            tag: tag as char,
            len: len as u64,
            limit: MAX_MESSAGE_LEN,
        });
    }
    if buf.len() < len + 1 {
        // Room for the rest is the reader's business: reserving here would reallocate
        // the buffer (copying it) under a reader that manages its own buffers.
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1);
    frame.advance(5);
    let body = frame.freeze();
    parse_body(tag, body).map(Some)
}

struct Reader {
    tag: u8,
    body: Bytes,
}

impl Reader {
    fn err(&self, reason: &str) -> ProtocolError {
        ProtocolError::Malformed {
            tag: self.tag as char,
            reason: reason.to_owned(),
        }
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        if self.body.is_empty() {
            return Err(self.err("message too short"));
        }
        Ok(self.body.get_u8())
    }
    fn i16(&mut self) -> Result<i16, ProtocolError> {
        if self.body.len() < 2 {
            return Err(self.err("message too short"));
        }
        Ok(self.body.get_i16())
    }
    fn i32(&mut self) -> Result<i32, ProtocolError> {
        if self.body.len() < 4 {
            return Err(self.err("message too short"));
        }
        Ok(self.body.get_i32())
    }
    fn cstr(&mut self) -> Result<String, ProtocolError> {
        let end = self
            .body
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("string not terminated"))?;
        let s = String::from_utf8_lossy(&self.body[..end]).into_owned();
        self.body.advance(end + 1);
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        if self.body.len() < n {
            return Err(self.err("message too short"));
        }
        Ok(self.body.split_to(n))
    }
}

fn parse_fields(r: &mut Reader) -> Result<ServerError, ProtocolError> {
    let mut e = ServerError::default();
    loop {
        let field = r.u8()?;
        if field == 0 {
            break;
        }
        let value = r.cstr()?;
        match field {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    Ok(e)
}

fn parse_body(tag: u8, body: Bytes) -> Result<BackendMessage, ProtocolError> {
    let mut r = Reader { tag, body };
    let msg = match tag {
        b'd' => return Ok(BackendMessage::CopyData(r.body)),
        b'R' => match r.i32()? {
            0 => BackendMessage::AuthenticationOk,
            3 => BackendMessage::AuthenticationCleartextPassword,
            5 => {
                let salt = r.bytes(4)?;
                BackendMessage::AuthenticationMd5Password([salt[0], salt[1], salt[2], salt[3]])
            }
            10 => {
                let mut mechs = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechs.push(m);
                }
                BackendMessage::AuthenticationSasl(mechs)
            }
            11 => BackendMessage::AuthenticationSaslContinue(r.body.split_off(0)),
            12 => BackendMessage::AuthenticationSaslFinal(r.body.split_off(0)),
            other => BackendMessage::AuthenticationOther(other as u32),
        },
        b'S' => BackendMessage::ParameterStatus {
            name: r.cstr()?,
            value: r.cstr()?,
        },
        b'K' => BackendMessage::BackendKeyData,
        b'Z' => BackendMessage::ReadyForQuery(r.u8()?),
        b'T' => {
            let n = r.i16()?;
            if n < 0 {
                return Err(r.err("negative column count"));
            }
            let mut cols = Vec::with_capacity(n as usize);
            for _ in 0..n {
                cols.push(r.cstr()?);
                r.bytes(18)?; // table oid, column no, type oid, size, modifier, format
            }
            BackendMessage::RowDescription(cols)
        }
        b'D' => {
            let n = r.i16()?;
            if n < 0 {
                return Err(r.err("negative column count"));
            }
            let mut vals = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let len = r.i32()?;
                if len < 0 {
                    vals.push(None);
                } else {
                    vals.push(Some(r.bytes(len as usize)?));
                }
            }
            BackendMessage::DataRow(vals)
        }
        b'C' => BackendMessage::CommandComplete(r.cstr()?),
        b'I' => BackendMessage::EmptyQueryResponse,
        b'E' => BackendMessage::ErrorResponse(parse_fields(&mut r)?),
        b'N' => BackendMessage::NoticeResponse(parse_fields(&mut r)?),
        b'W' => BackendMessage::CopyBothResponse,
        b'H' => BackendMessage::CopyOutResponse,
        b'G' => BackendMessage::CopyInResponse,
        b'c' => BackendMessage::CopyDone,
        b'v' => BackendMessage::NegotiateProtocolVersion,
        other => BackendMessage::Unknown(other),
    };
    Ok(msg)
}

/// Fuzzing entry point: decode everything in `data`, which must never panic.
pub fn fuzz_decode(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode(&mut buf) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(((body.len() + 4) as u32).to_be_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn decodes_split_anywhere() {
        let mut stream = frame(b'Z', b"I");
        stream.extend(frame(b'd', b"wxyz"));
        stream.extend(frame(
            b'E',
            b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0",
        ));
        for cut in 0..stream.len() {
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(part);
                while let Some(m) = decode(&mut buf).unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out.len(), 3, "cut at {cut}");
            assert_eq!(out[0], BackendMessage::ReadyForQuery(b'I'));
            assert_eq!(
                out[1],
                BackendMessage::CopyData(Bytes::from_static(b"wxyz"))
            );
            match &out[2] {
                BackendMessage::ErrorResponse(e) => {
                    assert_eq!(e.code, "42704");
                    assert_eq!(e.message, "replication slot \"x\" does not exist");
                }
                m => panic!("{m:?}"),
            }
        }
    }

    #[test]
    fn oversized_header_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        let err = decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtocolError::BadLength { tag: 'd', .. }),
            "{err}"
        );
        assert!(buf.capacity() < 1 << 20);
        let mut buf = BytesMut::from(&[b'Z', 0, 0, 0, 3][..]);
        assert!(decode(&mut buf).is_err());
    }

    #[test]
    fn data_row_with_null_and_truncated_rows() {
        let mut body = vec![0, 2];
        body.extend(3i32.to_be_bytes());
        body.extend(b"abc");
        body.extend((-1i32).to_be_bytes());
        let mut buf = BytesMut::from(&frame(b'D', &body)[..]);
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some(BackendMessage::DataRow(vec![
                Some(Bytes::from_static(b"abc")),
                None
            ]))
        );
        let mut buf = BytesMut::from(&frame(b'D', &body[..6])[..]);
        assert!(decode(&mut buf).is_err());
    }

    #[test]
    fn fuzz_entry_survives_garbage() {
        for seed in 0u32..2000 {
            let data: Vec<u8> = (0..64)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 97) >> 7) as u8)
                .collect();
            fuzz_decode(&data);
        }
    }
}
