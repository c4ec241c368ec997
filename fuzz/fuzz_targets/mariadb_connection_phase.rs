//! Feeds arbitrary bytes to the MariaDB connection-phase parser: framing
//! (continuations, length bounds), greeting capability edits and
//! handshake-response edits must never panic or allocate beyond the bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mtlsd::protocols::mariadb::wire;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(message)) = wire::take_message(&mut buf, wire::MAX_PHASE_MESSAGE) {
        let _ = message.ends_connection_phase();
        let mut payload = message.payload;
        let _ = wire::greeting_offers_tls(&payload);
        let _ = wire::set_greeting_tls(&mut payload, true);
        let _ = wire::response_caps(&payload);
        let _ = wire::ssl_request_from(&payload);
        let _ = wire::set_response_tls(&mut payload, false);
    }
});
