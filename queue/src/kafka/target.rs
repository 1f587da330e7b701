//! Where a Kafka queue is (`kafka://BROKER[,BROKER…]/TOPIC?partitions=N&group=G`), creating its
//! topics, and Kafka client errors as queue errors (brokers that cannot be reached are
//! [`QueueError::Unreachable`], never an empty queue).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::{QueueError, Result};

const BACKEND: &str = "kafka";

/// Where a Kafka queue is: `kafka://BROKER[,BROKER…]/TOPIC?partitions=N&group=G`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTarget {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// Partitions to create the topic with.
    pub partitions: i32,
    /// The consumer group.
    pub group: String,
    /// Session timeout (how soon a dead worker's partitions move).
    pub session_timeout_ms: u32,
}

/// Parses a Kafka queue URI.
pub fn parse_uri(uri: &str) -> Result<KafkaTarget> {
    let invalid = |reason: String| QueueError::InvalidUri {
        uri: uri.to_string(),
        reason,
    };
    let rest = uri
        .strip_prefix("kafka://")
        .ok_or_else(|| invalid("expected kafka://BROKER[,BROKER…]/TOPIC".into()))?;
    let (rest, query) = rest
        .split_once('?')
        .map_or((rest, None), |(r, q)| (r, Some(q)));
    let (brokers, topic) = rest
        .split_once('/')
        .ok_or_else(|| invalid("expected kafka://BROKER[,BROKER…]/TOPIC".into()))?;
    if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
        return Err(invalid("brokers are HOST:PORT, comma-separated".into()));
    }
    if topic.is_empty()
        || topic.len() > 200
        || !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(format!(
            "{topic:?}: a topic is 1-200 letters, digits, '.', '_' or '-'"
        )));
    }
    let mut t = KafkaTarget {
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        partitions: 8,
        group: format!("spotbatch-{topic}"),
        session_timeout_ms: 10_000,
    };
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("partitions", n)) => {
                t.partitions = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| invalid("partitions= takes 1..=10000".into()))?
            }
            Some(("group", g)) if !g.is_empty() => t.group = g.to_string(),
            Some(("session_timeout_ms", s)) => {
                t.session_timeout_ms = s
                    .parse()
                    .ok()
                    .filter(|s| (1000..=300_000).contains(s))
                    .ok_or_else(|| invalid("session_timeout_ms= takes 1000..=300000".into()))?
            }
            _ => {
                return Err(invalid(format!(
                    "unknown parameter {pair:?} (known: partitions, group, session_timeout_ms)"
                )))
            }
        }
    }
    Ok(t)
}

/// Creates the topic and its dead-letter topic (`TOPIC-dlq`); existing topics are fine.
pub async fn create(uri: &str) -> Result<()> {
    let t = parse_uri(uri)?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &t.brokers)
        .create()
        .map_err(|e| backend_err(&t.topic, e))?;
    let dlq = format!("{}-dlq", t.topic);
    let topics = [
        NewTopic::new(&t.topic, t.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let results = admin.create_topics(&topics, &opts).await.map_err(|e| {
        backend_err(
            &t.topic,
            format!("cannot create topics on {}: {e}", t.brokers),
        )
    })?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(backend_err(&topic, format!("cannot create topic: {code}")));
            }
        }
    }
    Ok(())
}

pub(super) fn backend_err(queue: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend {
        queue: queue.to_string(),
        backend: BACKEND,
        source: e.to_string().into(),
    }
}

/// A client error as a queue error: [`QueueError::Unreachable`] when no broker answered (so a
/// caller can tell brokers that are gone from a queue that is empty), else a backend error.
pub(super) fn kafka_err(queue: &str, e: &KafkaError, what: &str) -> QueueError {
    use rdkafka::types::RDKafkaErrorCode as C;
    let message = format!("{what}: {e}");
    match e.rdkafka_error_code() {
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException,
        ) => QueueError::Unreachable {
            queue: queue.to_string(),
            backend: BACKEND,
            source: message.into(),
        },
        _ => backend_err(queue, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let t = parse_uri("kafka://127.0.0.1:9092,h2:9093/shards?partitions=4&group=g1").unwrap();
        assert_eq!(t.brokers, "127.0.0.1:9092,h2:9093");
        assert_eq!(
            (t.topic.as_str(), t.partitions, t.group.as_str()),
            ("shards", 4, "g1")
        );
        let t = parse_uri("kafka://b:1/t").unwrap();
        assert_eq!((t.partitions, t.group.as_str()), (8, "spotbatch-t"));
        assert!(parse_uri("kafka://b/t").is_err());
        assert!(parse_uri("kafka://b:1/").is_err());
        assert!(parse_uri("kafka://b:1/t?partitions=0").is_err());
        assert!(parse_uri("kafka://b:1/t?colour=red").is_err());
        assert!(parse_uri("kafka://b:1/t?single_record_batches=true").is_err());
    }
}
