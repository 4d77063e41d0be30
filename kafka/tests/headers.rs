//! A record whose header key is not UTF-8 — which rdkafka's own `headers()` panics on — read
//! through the real broker: the key comes out decoded as Java decodes it, the other headers and
//! null values as they were.

use std::{ffi::CString, time::Duration};

use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    bindings as rd,
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    producer::{BaseProducer, Producer},
};

/// Produce one record with the given raw header keys through librdkafka's C API (the safe API
/// takes keys as `&str`, so it cannot write the record this test needs).
#[allow(unsafe_code)]
fn produce_raw(producer: &BaseProducer, topic: &str, value: &[u8], headers: &[(&[u8], Option<&[u8]>)]) {
    let topic = CString::new(topic).expect("a topic name has no NUL");
    let names: Vec<CString> = headers.iter().map(|(k, _)| CString::new(*k).expect("no NUL in the key")).collect();
    let vu = |vtype, u| rd::rd_kafka_vu_t { vtype, u };
    let mut vus = vec![
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC, rd::rd_kafka_vu_s__bindgen_ty_1 { cstr: topic.as_ptr() }),
        vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
            rd::rd_kafka_vu_s__bindgen_ty_1 {
                mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 { ptr: value.as_ptr() as *mut _, size: value.len() },
            },
        ),
        vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
            rd::rd_kafka_vu_s__bindgen_ty_1 { i: rd::RD_KAFKA_MSG_F_COPY },
        ),
    ];
    for (name, (_, v)) in names.iter().zip(headers) {
        let (val, size) = match v {
            Some(v) => (v.as_ptr().cast(), v.len() as isize),
            None => (std::ptr::null(), 0),
        };
        vus.push(vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADER,
            rd::rd_kafka_vu_s__bindgen_ty_1 {
                header: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 { name: name.as_ptr(), val, size },
            },
        ));
    }
    // SAFETY: the producer's handle is alive for the call; every pointer in `vus` points into
    // `topic`, `names`, `value` and `headers`, which outlive the call, and MSG_F_COPY makes
    // librdkafka copy the value (headers are always copied) before returning.
    let error = unsafe { rd::rd_kafka_produceva(producer.client().native_ptr(), vus.as_ptr(), vus.len()) };
    if !error.is_null() {
        // SAFETY: a non-null error returned by produceva is ours to read and destroy.
        let code = unsafe {
            let code = rd::rd_kafka_error_code(error);
            rd::rd_kafka_error_destroy(error);
            code
        };
        panic!("producing failed: {code:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn header_keys_that_are_not_utf8_are_read_not_panicked_on() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let topic = sluice_tests::unique("raw-headers");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    for r in admin.create_topics(&[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    produce_raw(
        &producer,
        &topic,
        b"v",
        &[(b"caf\xe9", Some(b"latin-1 key")), (b"ok", Some(&[0, 255, 128])), (b"null", None)],
    );
    producer.flush(Duration::from_secs(30))?;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", sluice_tests::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no record within 60 s");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message?;
        assert_eq!(message.payload(), Some(&b"v"[..]));
        let headers = sluice_kafka::headers(&message);
        assert_eq!(
            headers,
            [
                ("caf\u{fffd}".to_owned(), Some(b"latin-1 key".to_vec())),
                ("ok".to_owned(), Some(vec![0, 255, 128])),
                ("null".to_owned(), None),
            ]
        );
        return Ok(());
    }
}
