//! `kafka::flush_threaded`, which every transaction commit of `waymark run` and every offset
//! commit of a sink waits on: when it returns, each message handed to the producer has been
//! acknowledged by the broker (and its delivery report served), not merely sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use waymark_e2e::*;

/// Counts the delivery reports that say "acknowledged".
#[derive(Clone, Default)]
struct Acknowledged(Arc<AtomicUsize>);

impl ClientContext for Acknowledged {}

impl ProducerContext for Acknowledged {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn flush_threaded_returns_once_every_message_is_acknowledged() {
    let scenario = Scenario::new("flush", 2, "").unwrap();
    let acknowledged = Acknowledged::default();
    let producer: ThreadedProducer<Acknowledged> =
        waymark::kafka::producer_config(&brokers(), &BTreeMap::new())
            // Batches wait up to a second before they are sent: a flush that did not wait
            // would return with nearly every message still unacknowledged.
            .set("linger.ms", "1000")
            .create_with_context(acknowledged.clone())
            .unwrap();
    let topic = &scenario.topics.customer_events;
    for round in 1..=3 {
        for i in 0..500 {
            let key = format!("customer-{i}");
            producer
                .send(BaseRecord::<String, str>::to(topic).key(&key).payload("{}"))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        waymark::kafka::flush_threaded(&producer, Duration::from_secs(30)).unwrap();
        assert_eq!(acknowledged.0.load(Ordering::SeqCst), 500 * round);
    }
}
