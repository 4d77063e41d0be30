//! A Lambda function written as one writes it for Lambda's Kafka event source, with the Rust
//! runtime (`lambda_runtime`) and AWS's event types (`aws_lambda_events`): the runner's tests run
//! it unchanged against the Runtime API. It returns one output record per input; an input value
//! `{"poison": true}` makes it fail.

use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handler(event: LambdaEvent<KafkaEvent>) -> Result<Value, Error> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for records in event.payload.records.values() {
        for r in records {
            let key = match &r.key {
                Some(k) => Some(String::from_utf8(b64.decode(k)?)?),
                None => None,
            };
            let value: Value = match &r.value {
                Some(v) => serde_json::from_slice(&b64.decode(v)?)?,
                None => Value::Null,
            };
            if value["poison"] == json!(true) {
                return Err(format!("poison record at offset {}", r.offset).into());
            }
            // Header values arrive as Java's signed bytes.
            let mut headers = serde_json::Map::new();
            for h in &r.headers {
                for (k, v) in h {
                    let bytes: Vec<u8> = v.iter().map(|b| *b as u8).collect();
                    headers.insert(k.clone(), Value::String(String::from_utf8(bytes)?));
                }
            }
            out.push(json!({
                "key": key,
                "value": {"in": value, "partition": r.partition, "offset": r.offset, "headers": headers,
                          "requestId": event.context.request_id},
                "headers": {"runtime": "lambda_runtime"},
            }));
        }
    }
    Ok(json!({"records": out}))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
