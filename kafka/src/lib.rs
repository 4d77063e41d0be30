//! Reading a consumed record's headers without trusting their keys to be UTF-8.
//!
//! rdkafka's `Headers::get`/`iter` unwrap the key's conversion to `&str`, so a record whose header
//! key is not valid UTF-8 — which any non-Java producer can write — panics the consuming thread.
//! A user can put such a record on a topic, and nothing a user writes may crash a Sluice
//! component, so the keys are read here from librdkafka directly, as bytes, and decoded the way
//! Kafka's Java clients decode them (`new String(bytes, UTF_8)`: invalid sequences become
//! U+FFFD), which is what ksqlDB and AWS's Kafka event source see for the same record.
//!
//! This is the one crate of the workspace with `unsafe` code: two calls into librdkafka's C API,
//! on a message that the borrow keeps alive.

use rdkafka::{bindings as rd, message::BorrowedMessage};

/// A header: its key (decoded as Java decodes it) and its value (`None`: a null value).
pub type Header = (String, Option<Vec<u8>>);

/// The headers of a consumed record, in order.
#[allow(unsafe_code)]
pub fn headers(message: &BorrowedMessage<'_>) -> Vec<Header> {
    let mut out = Vec::new();
    let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is the live librdkafka message that `message` borrows (it is
    // destroyed only when `message` is dropped). `rd_kafka_message_headers` stores into `hdrs` a
    // pointer to headers owned by that message, or returns an error and leaves it null.
    let err = unsafe { rd::rd_kafka_message_headers(message.ptr(), &mut hdrs) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return out;
    }
    for idx in 0.. {
        let mut name: *const std::os::raw::c_char = std::ptr::null();
        let mut value: *const std::os::raw::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `hdrs` is non-null and owned by the message, alive for this call; the out
        // pointers are valid locals. On success librdkafka points `name` at a NUL-terminated
        // string and `value` at `size` bytes (or null for a null value), both owned by the
        // headers, which live as long as the message; an index past the end returns an error.
        let err = unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: as above; the bytes are copied before the borrow of `message` ends.
        let (key, value) = unsafe {
            let key = std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned();
            let value = (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size).to_vec());
            (key, value)
        };
        out.push((key, value));
    }
    out
}
