//! Reading back what reached a Kafka broker: a consumer on every partition of some topics from
//! the beginning, and a message's headers.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A consumer (group `group`, no commits) assigned every partition of `topics`, each from its
/// beginning. Blocking: call it on a blocking thread in async tests.
pub fn consumer_from_beginning(brokers: &str, group: &str, topics: &[&str]) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment
                    .add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("assignment");
            }
        }
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// A message's headers, values as (lossy) UTF-8; a header without a value maps to "".
pub fn headers_of(message: &impl Message) -> HashMap<String, String> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x.key.to_owned(),
                        x.value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
