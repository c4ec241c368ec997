//! MariaDB connection-phase wire format: just enough to move the TLS
//! upgrade into mtlsd.
//!
//! Packets are a 3-byte little-endian length, a 1-byte sequence id and the
//! payload; a length of 0xFFFFFF means the payload continues in the next
//! packet. Every length read from the peer is checked against a bound
//! before anything is allocated, and nothing here panics on peer bytes.

use bytes::{Buf, BytesMut};

/// Capability bit: the peer speaks TLS.
pub const CLIENT_SSL: u32 = 0x0800;
/// Payload bytes of an SSLRequest (caps, max packet, charset, filler, ext caps).
pub const SSL_REQUEST_LEN: usize = 32;
/// A single packet's payload cannot exceed this on the wire.
pub const MAX_CHUNK: usize = 0xFF_FFFF;
/// The largest connection-phase message mtlsd accepts (greetings,
/// handshake responses and auth exchanges are far smaller; 16 MiB
/// payloads only appear after the connection phase, where bytes are
/// copied, not parsed).
pub const MAX_PHASE_MESSAGE: usize = 1024 * 1024;

/// Why connection-phase bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet of {0} bytes exceeds the connection-phase limit")]
    TooLarge(usize),
    #[error("greeting is malformed: {0}")]
    BadGreeting(&'static str),
    #[error("handshake response is {0} bytes, shorter than the 32-byte capability block")]
    ShortResponse(usize),
    #[error("the connection closed during the connection phase")]
    Closed,
}

/// One logical message (continuation packets joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sequence id of the first packet.
    pub seq: u8,
    pub payload: Vec<u8>,
    /// How many packets it spanned (sequence ids advance by this).
    pub packets: u8,
}

impl Message {
    pub fn first_byte(&self) -> Option<u8> {
        self.payload.first().copied()
    }

    /// OK (0x00) or ERR (0xFF) from the server ends the connection phase.
    pub fn ends_connection_phase(&self) -> bool {
        matches!(self.first_byte(), Some(0x00 | 0xFF))
    }
}

/// Takes one complete message off the front of `buf`, if it holds one.
/// `Ok(None)` means "need more bytes".
pub fn take_message(buf: &mut BytesMut, limit: usize) -> Result<Option<Message>, WireError> {
    let mut offset = 0usize;
    let mut total = 0usize;
    let mut packets = 0u8;
    let mut seq = None;
    loop {
        if buf.len() < offset + 4 {
            return Ok(None);
        }
        let len = usize::from(buf[offset])
            | usize::from(buf[offset + 1]) << 8
            | usize::from(buf[offset + 2]) << 16;
        seq.get_or_insert(buf[offset + 3]);
        total += len;
        if total > limit {
            return Err(WireError::TooLarge(total));
        }
        if buf.len() < offset + 4 + len {
            return Ok(None);
        }
        offset += 4 + len;
        packets = packets.wrapping_add(1);
        if len < MAX_CHUNK {
            break;
        }
    }
    let mut payload = Vec::with_capacity(total);
    let mut rest = buf.split_to(offset);
    while rest.has_remaining() {
        let len = usize::from(rest[0]) | usize::from(rest[1]) << 8 | usize::from(rest[2]) << 16;
        rest.advance(4);
        payload.extend_from_slice(&rest[..len]);
        rest.advance(len);
    }
    Ok(Some(Message {
        seq: seq.unwrap_or(0),
        payload,
        packets,
    }))
}

/// Encodes `payload` as packets starting at sequence id `seq`.
pub fn encode(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    let mut seq = seq;
    let mut chunks = payload.chunks(MAX_CHUNK).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[0, 0, 0, seq]);
        return out;
    }
    let mut last_len = 0;
    for chunk in chunks {
        let len = chunk.len();
        out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]);
        out.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
        last_len = len;
    }
    // A payload that is an exact multiple of the chunk size ends with an
    // empty packet.
    if last_len == MAX_CHUNK {
        out.extend_from_slice(&[0, 0, 0, seq]);
    }
    out
}

/// Where the lower 16 capability bits sit in a protocol-10 greeting.
fn greeting_caps_offset(greeting: &[u8]) -> Result<usize, WireError> {
    if greeting.first() != Some(&10) {
        return Err(WireError::BadGreeting("not protocol version 10"));
    }
    let version_end = greeting[1..]
        .iter()
        .position(|b| *b == 0)
        .ok_or(WireError::BadGreeting(
            "server version is not NUL-terminated",
        ))?;
    // version + NUL, connection id (4), scramble part 1 (8), filler (1).
    let offset = 1 + version_end + 1 + 4 + 8 + 1;
    if greeting.len() < offset + 2 {
        return Err(WireError::BadGreeting("too short for capability flags"));
    }
    Ok(offset)
}

/// Whether the server's greeting offers TLS.
pub fn greeting_offers_tls(greeting: &[u8]) -> Result<bool, WireError> {
    let at = greeting_caps_offset(greeting)?;
    let caps = u16::from_le_bytes([greeting[at], greeting[at + 1]]);
    Ok(u32::from(caps) & CLIENT_SSL != 0)
}

/// Sets or clears CLIENT_SSL in a greeting.
pub fn set_greeting_tls(greeting: &mut [u8], on: bool) -> Result<(), WireError> {
    let at = greeting_caps_offset(greeting)?;
    let mut caps = u16::from_le_bytes([greeting[at], greeting[at + 1]]);
    if on {
        caps |= CLIENT_SSL as u16;
    } else {
        caps &= !(CLIENT_SSL as u16);
    }
    greeting[at..at + 2].copy_from_slice(&caps.to_le_bytes());
    Ok(())
}

/// The client capability flags at the start of a HandshakeResponse or
/// SSLRequest.
pub fn response_caps(response: &[u8]) -> Result<u32, WireError> {
    if response.len() < SSL_REQUEST_LEN {
        return Err(WireError::ShortResponse(response.len()));
    }
    Ok(u32::from_le_bytes([
        response[0],
        response[1],
        response[2],
        response[3],
    ]))
}

/// Sets or clears CLIENT_SSL in a HandshakeResponse/SSLRequest.
pub fn set_response_tls(response: &mut [u8], on: bool) -> Result<(), WireError> {
    let mut caps = response_caps(response)?;
    if on {
        caps |= CLIENT_SSL;
    } else {
        caps &= !CLIENT_SSL;
    }
    response[..4].copy_from_slice(&caps.to_le_bytes());
    Ok(())
}

/// The SSLRequest a client would have sent: its response's first 32 bytes
/// with CLIENT_SSL set (the server takes capabilities from it).
pub fn ssl_request_from(response: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut request = response
        .get(..SSL_REQUEST_LEN)
        .ok_or(WireError::ShortResponse(response.len()))?
        .to_vec();
    set_response_tls(&mut request, true)?;
    Ok(request)
}

/// An ERR packet payload the client can print. `code` must be a server
/// error code (below 2000): clients treat 2000–2999 as their own and call
/// the packet malformed.
pub fn err_payload(code: u16, sqlstate: &[u8; 5], message: &str) -> Vec<u8> {
    let mut payload = vec![0xFF];
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    payload.extend_from_slice(sqlstate);
    payload.extend_from_slice(message.as_bytes());
    payload
}

/// What an ERR packet from a server says (`ERROR 1129: Host … is
/// blocked`), at most 200 characters of it, for the log. The server's own
/// words are all there is to report: its code says little on its own.
pub fn err_text(payload: &[u8]) -> String {
    let Some([lo, hi, rest @ ..]) = payload.strip_prefix(&[0xFF]) else {
        return "an unreadable ERR".to_owned();
    };
    let code = u16::from_le_bytes([*lo, *hi]);
    // `#` and a five-byte SQL state, sent by every server of this century.
    let message = match rest {
        [b'#', _, _, _, _, _, message @ ..] => message,
        message => message,
    };
    let message: String = String::from_utf8_lossy(message).chars().take(200).collect();
    format!("ERROR {code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(caps: u16) -> Vec<u8> {
        let mut g = vec![10];
        g.extend_from_slice(b"10.11.6-MariaDB\0");
        g.extend_from_slice(&[1, 0, 0, 0]); // connection id
        g.extend_from_slice(b"12345678"); // scramble 1
        g.push(0); // filler
        g.extend_from_slice(&caps.to_le_bytes());
        g.extend_from_slice(&[33, 2, 0, 0xff, 0x81, 21, 0, 0, 0, 0, 0, 0]);
        g
    }

    #[test]
    fn messages_round_trip_including_continuations() {
        for len in [0, 1, 100, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 5] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = BytesMut::from(&encode(3, &payload)[..]);
            buf.extend_from_slice(b"next");
            let message = take_message(&mut buf, usize::MAX).unwrap().unwrap();
            assert_eq!(message.seq, 3);
            assert_eq!(message.payload.len(), len);
            assert!(message.payload == payload);
            assert_eq!(&buf[..], b"next");
        }
    }

    #[test]
    fn partial_and_oversized_input_is_handled_without_allocating() {
        let bytes = encode(1, &[7u8; 50]);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(take_message(&mut buf, 1024).unwrap(), None, "cut {cut}");
        }
        // A header announcing 16 MiB against a 1 MiB limit fails before
        // the payload arrives.
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0][..]);
        assert_eq!(
            take_message(&mut buf, MAX_PHASE_MESSAGE),
            Err(WireError::TooLarge(MAX_CHUNK))
        );
    }

    #[test]
    fn tls_bit_is_found_set_and_cleared() {
        let mut g = greeting(0xFFFF);
        assert!(greeting_offers_tls(&g).unwrap());
        set_greeting_tls(&mut g, false).unwrap();
        assert!(!greeting_offers_tls(&g).unwrap());
        assert_eq!(g, greeting(0xF7FF));
        set_greeting_tls(&mut g, true).unwrap();
        assert_eq!(g, greeting(0xFFFF));

        let mut response = vec![0u8; 40];
        response[..4].copy_from_slice(&0x000A_A205u32.to_le_bytes());
        let request = ssl_request_from(&response).unwrap();
        assert_eq!(request.len(), 32);
        assert_eq!(response_caps(&request).unwrap(), 0x000A_A205 | CLIENT_SSL);
        assert_eq!(response_caps(&response).unwrap() & CLIENT_SSL, 0);
    }

    #[test]
    fn garbage_greetings_and_short_responses_are_errors() {
        for bad in [
            &[][..],
            &[9, 1, 2][..],
            &[10, b'x', b'y'][..],
            &[10, 0, 1, 2][..],
        ] {
            assert!(greeting_offers_tls(bad).is_err(), "{bad:?}");
        }
        assert_eq!(response_caps(&[0; 31]), Err(WireError::ShortResponse(31)));
        assert!(ssl_request_from(&[1, 2, 3]).is_err());
    }

    #[test]
    fn hostile_bytes_never_panic() {
        // Deterministic xorshift so a failure reproduces.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && !bytes.is_empty() {
                bytes[0] = 10; // look like a greeting
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = take_message(&mut buf, 64) {}
            let _ = greeting_offers_tls(&bytes);
            let _ = set_greeting_tls(&mut bytes.clone(), true);
            let _ = response_caps(&bytes);
            let _ = ssl_request_from(&bytes);
            let _ = set_response_tls(&mut bytes, false);
        }
    }

    #[test]
    fn err_text_reads_code_and_message() {
        let payload = err_payload(1129, b"HY000", "Host 'a' is blocked");
        assert_eq!(err_text(&payload), "ERROR 1129: Host 'a' is blocked");
        assert_eq!(err_text(&[0xFF, 0x15, 0x04, b'n', b'o']), "ERROR 1045: no");
        assert_eq!(err_text(&[0xFF, 1]), "an unreadable ERR");
        let long = err_payload(1105, b"HY000", &"x".repeat(500));
        assert_eq!(err_text(&long).len(), "ERROR 1105: ".len() + 200);
    }
}
