//! Each notice source against a loopback server speaking its cloud's documented format.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::metadata::{self, AwsState};
use spotbatch_worker::notice::{
    self, AwsSource, AzureSource, GcpSource, NoticeAction, NoticeSource,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn aws_imdsv2_token_required_404_until_notice_then_terminate_with_its_deadline() {
    let state = AwsState::default();
    *state.fail_first.lock().unwrap() = 2; // metadata errors are retried, not fatal
    let fake = metadata::aws(state.clone());
    let body = metadata::aws_terminate_in(90);
    let set = {
        let (state, body) = (state.clone(), body.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2000));
            *state.action.lock().unwrap() = Some(body);
        })
    };
    let started = Instant::now();
    let n = rt().block_on(async {
        let mut src = AwsSource::new(&fake.url, Duration::from_millis(50), None);
        tokio::time::timeout(Duration::from_secs(20), src.next())
            .await
            .expect("a notice")
    });
    set.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "no notice before it was set"
    );
    assert_eq!(
        (n.source, n.kind.as_str(), n.action),
        ("aws", "terminate", NoticeAction::Drain)
    );
    let left = n.deadline.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(85) && left <= Duration::from_secs(90),
        "deadline from the notice's time: {left:?}"
    );
    let reqs = fake.requests();
    assert!(reqs
        .iter()
        .any(|r| r.method == "PUT" && r.path == "/latest/api/token"));
    let gets: Vec<_> = reqs.iter().filter(|r| r.method == "GET").collect();
    assert!(gets.len() > 2, "polled until the notice");
    assert!(gets.iter().all(|r| r
        .headers
        .get("x-aws-ec2-metadata-token")
        .map(String::as_str)
        == Some(metadata::AWS_TOKEN)));
}

#[test]
fn aws_rebalance_recommendation_follows_the_policy() {
    let state = AwsState::default();
    *state.rebalance.lock().unwrap() = Some(r#"{"noticeTime":"2026-11-22T21:40:00Z"}"#.into());
    let fake = metadata::aws(state);
    let n = rt().block_on(async {
        let mut src = AwsSource::new(
            &fake.url,
            Duration::from_millis(50),
            Some(NoticeAction::StopLeasing),
        );
        tokio::time::timeout(Duration::from_secs(10), src.next())
            .await
            .expect("a notice")
    });
    assert_eq!(
        (n.kind.as_str(), n.action),
        ("rebalance", NoticeAction::StopLeasing)
    );
}

#[test]
fn gcp_preempted_true_with_the_configured_deadline() {
    let flag = Arc::new(Mutex::new(false));
    let fake = metadata::gcp(Arc::clone(&flag));
    let f2 = Arc::clone(&flag);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        *f2.lock().unwrap() = true;
    });
    let started = Instant::now();
    let n = rt().block_on(async {
        let mut src = GcpSource::new(&fake.url, Duration::from_secs(30));
        tokio::time::timeout(Duration::from_secs(20), src.next())
            .await
            .expect("a notice")
    });
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert_eq!((n.source, n.kind.as_str()), ("gcp", "preempted"));
    let left = n.deadline.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(28) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    let reqs = fake.requests();
    assert!(reqs
        .iter()
        .all(|r| r.path == "/computeMetadata/v1/instance/preempted?wait_for_change=true"));
    assert!(
        reqs.len() >= 2,
        "waited for a change, then watched again after FALSE"
    );
}

#[test]
fn azure_preempt_for_this_vm_then_acknowledged() {
    let events = Arc::new(Mutex::new(
        r#"{"DocumentIncarnation":1,"Events":[{"EventId":"other-1","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["someone-else"],"EventStatus":"Scheduled","NotBefore":"Mon, 19 Sep 2016 18:29:47 GMT"},{"EventId":"reboot-1","EventType":"Reboot","ResourceType":"VirtualMachine","Resources":["vm-7"],"EventStatus":"Scheduled","NotBefore":""}]}"#
            .to_string(),
    ));
    let acks: Arc<Mutex<Vec<String>>> = Arc::default();
    let fake = metadata::azure("vm-7", Arc::clone(&events), Arc::clone(&acks));
    let not_before = SystemTime::now() + Duration::from_secs(30);
    let nb = httpdate(not_before);
    let ev2 = Arc::clone(&events);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        *ev2.lock().unwrap() = format!(
            r#"{{"DocumentIncarnation":2,"Events":[{{"EventId":"A123-preempt","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["vm-7"],"EventStatus":"Scheduled","NotBefore":"{nb}","Description":"","EventSource":"Platform","DurationInSeconds":-1}}]}}"#
        );
    });
    let n = rt().block_on(async {
        let mut src = AzureSource::new(&fake.url, Duration::from_millis(50), None);
        let n = tokio::time::timeout(Duration::from_secs(20), src.next())
            .await
            .expect("a notice");
        src.acknowledge(&n).await;
        n
    });
    assert_eq!(
        (n.source, n.kind.as_str(), n.event_id.as_deref()),
        ("azure", "Preempt", Some("A123-preempt"))
    );
    let left = n.deadline.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(27) && left <= Duration::from_secs(30),
        "deadline from NotBefore: {left:?}"
    );
    let acks = acks.lock().unwrap();
    assert_eq!(acks.len(), 1);
    let ack: serde_json::Value = serde_json::from_str(&acks[0]).unwrap();
    assert_eq!(
        ack,
        serde_json::json!({"StartRequests": [{"EventId": "A123-preempt"}]})
    );
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.headers.get("metadata").map(String::as_str) == Some("true")));
}

#[test]
fn probe_finds_the_service_that_answers() {
    let aws = metadata::aws(AwsState::default());
    let gcp = metadata::gcp(Arc::new(Mutex::new(false)));
    let azure = metadata::azure("vm", Arc::default(), Arc::default());
    // Nothing listens on a freshly closed port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = rt();
    assert_eq!(
        r.block_on(notice::probe(&aws.url, &closed, &closed)),
        Some("aws")
    );
    assert_eq!(
        r.block_on(notice::probe(&closed, &gcp.url, &closed)),
        Some("gcp")
    );
    assert_eq!(
        r.block_on(notice::probe(&closed, &closed, &azure.url)),
        Some("azure")
    );
    assert_eq!(r.block_on(notice::probe(&closed, &closed, &closed)), None);
}

/// RFC 1123, as Azure writes NotBefore.
fn httpdate(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let s = metadata::chrono_like_rfc3339(t); // YYYY-MM-DDTHH:MM:SSZ
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let day = DAYS[((secs / 86_400) % 7) as usize];
    let month = MONTHS[s[5..7].parse::<usize>().unwrap() - 1];
    format!(
        "{day}, {} {month} {} {} GMT",
        &s[8..10],
        &s[0..4],
        &s[11..19]
    )
}
