//! The metadata services' answers, read: each cloud's response body → a [`Notice`], nothing yet,
//! or a one-line [`ResponseError`] (the source logs it and asks again). Pure functions over the
//! bytes, so that they can be fuzzed (`fuzz/`, target `notices`); each source's poll uses its own.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use spotbatch_proto::manifest::one_line;
use tracing::debug;

use super::{parse_rfc3339, Notice, NoticeAction};

/// A metadata service's answer that could not be read (the source logs it and asks again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResponseError(String);

impl ResponseError {
    /// The message, on one line (serde quotes unexpected names, and bodies are quoted, as sent).
    fn new(message: &str) -> Self {
        Self(one_line(message))
    }
}

/// A response body quoted in a message: its first 200 characters.
fn excerpt(body: &str) -> &str {
    body.char_indices()
        .nth(200)
        .map_or(body, |(i, _)| &body[..i])
}

impl From<ResponseError> for String {
    fn from(e: ResponseError) -> Self {
        e.0
    }
}

/// AWS's `spot/instance-action` document (`{"action": "terminate", "time": RFC 3339}`): a drain
/// by its time.
pub fn parse_aws_instance_action(body: &str) -> Result<Notice, ResponseError> {
    #[derive(Deserialize)]
    struct Action {
        action: String,
        time: String,
    }
    let a: Action = serde_json::from_str(body)
        .map_err(|e| ResponseError::new(&format!("instance-action: {e}: {}", excerpt(body))))?;
    let deadline = parse_rfc3339(&a.time).ok_or_else(|| {
        ResponseError::new(&format!("instance-action time {:?}", excerpt(&a.time)))
    })?;
    Ok(Notice {
        source: "aws",
        kind: a.action,
        deadline,
        action: NoticeAction::Drain,
        event_id: None,
    })
}

/// AWS's `events/recommendations/rebalance` document (`{"noticeTime": …}`), seen at `now`: a
/// notice with `action`.
pub fn parse_aws_rebalance(
    body: &str,
    action: NoticeAction,
    now: SystemTime,
) -> Result<Notice, ResponseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Rebalance {
        notice_time: String,
    }
    let r: Rebalance = serde_json::from_str(body)
        .map_err(|e| ResponseError::new(&format!("rebalance: {e}: {}", excerpt(body))))?;
    debug!(notice_time = %r.notice_time, "aws rebalance recommendation");
    Ok(Notice {
        source: "aws",
        kind: "rebalance".into(),
        // A recommendation comes before any interruption notice; two minutes is the least an
        // interruption notice gives.
        deadline: now + Duration::from_secs(120),
        action,
        event_id: None,
    })
}

/// GCP's `instance/preempted` value, seen at `now`: `TRUE` is a drain within `grace`; anything
/// else (`FALSE`) is no notice.
pub fn parse_gcp_preempted(body: &str, now: SystemTime, grace: Duration) -> Option<Notice> {
    (body.trim() == "TRUE").then(|| Notice {
        source: "gcp",
        kind: "preempted".into(),
        deadline: now + grace,
        action: NoticeAction::Drain,
        event_id: None,
    })
}

/// Azure's Scheduled Events document, seen at `now`: the first `Preempt` event naming the VM
/// `vm_name`, a drain by its `NotBefore` (30 s from now when that does not parse).
pub fn parse_azure_events(
    body: &[u8],
    vm_name: &str,
    now: SystemTime,
) -> Result<Option<Notice>, ResponseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Doc {
        events: Vec<Event>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Event {
        event_id: String,
        event_type: String,
        #[serde(default)]
        resources: Vec<String>,
        #[serde(default)]
        not_before: String,
    }
    let doc: Doc = serde_json::from_slice(body)
        .map_err(|e| ResponseError::new(&format!("scheduledevents: {e}")))?;
    for e in doc.events {
        if e.event_type == "Preempt" && e.resources.iter().any(|r| r == vm_name) {
            let deadline = chrono::DateTime::parse_from_rfc2822(&e.not_before)
                .map(SystemTime::from)
                .unwrap_or_else(|_| now + Duration::from_secs(30));
            return Ok(Some(Notice {
                source: "azure",
                kind: e.event_type,
                deadline,
                action: NoticeAction::Drain,
                event_id: Some(e.event_id),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_answers_parse_into_notices_or_errors() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let n =
            parse_aws_instance_action(r#"{"action": "terminate", "time": "2026-11-22T21:40:00Z"}"#)
                .unwrap();
        assert_eq!(
            (n.source, n.kind.as_str(), n.action),
            ("aws", "terminate", NoticeAction::Drain)
        );
        assert_eq!(n.deadline, parse_rfc3339("2026-11-22T21:40:00Z").unwrap());
        let e = parse_aws_instance_action(r#"{"action": "stop", "time": "soon"}"#).unwrap_err();
        assert_eq!(e.to_string(), r#"instance-action time "soon""#);
        assert!(parse_aws_instance_action("<html>").is_err());
        // Found by fuzzing: the body (and serde's quote of a bad field name) spanned lines.
        let e = parse_aws_instance_action("{\"0ction\":\n\n-1 \"time\"}").unwrap_err();
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        let long = format!("{{\"action\": 1, \"x\": \"{}\"}}", "y".repeat(5000));
        assert!(
            parse_aws_instance_action(&long)
                .unwrap_err()
                .to_string()
                .len()
                < 400
        );
        let e = parse_azure_events(b"{\"Events\":[{\"Event\nId\":1}]}", "vm-7", now).unwrap_err();
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        let n = parse_aws_rebalance(
            r#"{"noticeTime":"2026-11-22T21:40:00Z"}"#,
            NoticeAction::StopLeasing,
            now,
        )
        .unwrap();
        assert_eq!(
            (n.kind.as_str(), n.action),
            ("rebalance", NoticeAction::StopLeasing)
        );
        assert_eq!(n.deadline, now + Duration::from_secs(120));
        assert!(parse_aws_rebalance("{}", NoticeAction::Drain, now).is_err());
        let grace = Duration::from_secs(30);
        assert_eq!(
            parse_gcp_preempted(" TRUE\n", now, grace).unwrap().deadline,
            now + grace
        );
        assert!(parse_gcp_preempted("FALSE", now, grace).is_none());
        let doc = br#"{"Events":[{"EventId":"e1","EventType":"Preempt","Resources":["vm-7"],"NotBefore":"Mon, 19 Sep 2016 18:29:47 GMT"}]}"#;
        let n = parse_azure_events(doc, "vm-7", now).unwrap().unwrap();
        assert_eq!((n.source, n.event_id.as_deref()), ("azure", Some("e1")));
        assert!(parse_azure_events(doc, "vm-8", now).unwrap().is_none());
        assert!(parse_azure_events(b"[]", "vm-7", now)
            .unwrap_err()
            .to_string()
            .starts_with("scheduledevents: "));
    }
}
