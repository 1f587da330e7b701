//! deploy/: every Kubernetes manifest with a built-in kind passes `kubernetes-validate --strict`
//! offline (the schemas ship in the PyPI package); the custom resources (KEDA, Karpenter) have no
//! schema there, so their required fields are checked here.

mod common;

use std::process::Command;

use common::*;

fn manifests(dir: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn kubernetes_manifests_pass_strict_validation() {
    let files = manifests("deploy/kubernetes");
    assert!(files.len() >= 3);
    let out = Command::new(python())
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            "1.33.0",
        ])
        .args(&files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in [
        "deployment/spotbatch-coordinator",
        "service/spotbatch-coordinator",
        "poddisruptionbudget/spotbatch-coordinator",
        "deployment/spotbatch-worker",
        "deployment/spotbatch-worker-on-demand",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
    assert!(!text.contains("WARN"), "{text}");
}

/// Runs the CRD validator (scripts/crds, installed by `make test`) on files; (passed, output).
fn validate_crds(files: &[std::path::PathBuf]) -> (bool, String) {
    let script = root().join("scripts/crds/validate.mjs");
    assert!(
        root().join("scripts/crds/node_modules").is_dir(),
        "scripts/crds/node_modules missing: run the tests with `make test`"
    );
    let out = Command::new("node")
        .arg(script)
        .args(files)
        .output()
        .expect("run node");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn keda_and_karpenter_manifests_pass_their_crd_schemas() {
    let mut files = manifests("deploy/keda");
    files.extend(manifests("deploy/karpenter"));
    let (ok, text) = validate_crds(&files);
    assert!(ok, "{text}");
    for want in [
        "ScaledObject/spotbatch-worker-sqs",
        "ScaledObject/spotbatch-worker-kafka",
        "ScaledObject/spotbatch-worker-spot",
        "ScaledObject/spotbatch-worker-on-demand",
        "TriggerAuthentication/spotbatch-aws",
        "NodePool/gpu-spot",
        "NodePool/gpu-on-demand-base",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("PASS ") && l.ends_with(want)),
            "{want}: {text}"
        );
    }
    // The check can fail: a policy Karpenter does not know and a ScaledObject without its target.
    let dir = tempfile::tempdir().expect("temp dir");
    let np = std::fs::read_to_string(root().join("deploy/karpenter/nodepool.yaml"))
        .expect("nodepool")
        .replace(
            "consolidationPolicy: WhenEmptyOrUnderutilized",
            "consolidationPolicy: Sometimes",
        );
    let so = std::fs::read_to_string(root().join("deploy/keda/scaledobject-sqs.yaml"))
        .expect("scaledobject")
        .replace("scaleTargetRef:", "scaleTarget:");
    let (a, b) = (dir.path().join("np.yaml"), dir.path().join("so.yaml"));
    std::fs::write(&a, np).expect("write");
    std::fs::write(&b, so).expect("write");
    let (ok, text) = validate_crds(&[a, b]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("consolidationPolicy must be equal to one of the allowed values"),
        "{text}"
    );
    assert!(
        text.contains("must have required property scaleTargetRef"),
        "{text}"
    );
}

#[test]
fn worker_deployment_is_ready_for_spot() {
    let w = std::fs::read_to_string(root().join("deploy/kubernetes/worker.yaml")).unwrap();
    let grace: u64 = w
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("terminationGracePeriodSeconds");
    assert!(grace >= 120, "{grace}");
    for needle in [
        "preStop:",
        "kill -TERM 1",
        "karpenter.sh/capacity-type",
        "nvidia.com/gpu: 1",
        "--notices=auto",
        "--metrics-addr=",
        "--peer-advertise=http://$(POD_IP):7071",
        "fieldPath: status.podIP",
        "containerPort: 7071",
    ] {
        assert!(w.contains(needle), "worker.yaml lacks {needle}");
    }
    let k = std::fs::read_to_string(root().join("deploy/karpenter/nodepool.yaml")).unwrap();
    let types = k
        .lines()
        .filter(|l| l.trim_start().starts_with("- g") || l.trim_start().starts_with("- p"))
        .count();
    assert!(types >= 10, "{types} instance types in the spot pool");
    assert!(k.contains("values: [spot]") && k.contains("values: [on-demand]"));
    let sqs = std::fs::read_to_string(root().join("deploy/keda/scaledobject-sqs.yaml")).unwrap();
    assert!(sqs.contains("type: aws-sqs-queue") && sqs.contains("name: spotbatch-worker"));
    let kafka =
        std::fs::read_to_string(root().join("deploy/keda/scaledobject-kafka.yaml")).unwrap();
    assert!(kafka.contains("type: kafka") && kafka.contains("lagThreshold"));
}

/// Issue 23: two worker Deployments, spot and on-demand, apart (selectors that do not overlap,
/// each on its node pool, each telling the coordinator its capacity), scaled by KEDA's Prometheus
/// scaler on the coordinator's desired workers of their capacity.
#[test]
fn spot_and_on_demand_workers_scale_on_the_desired_workers_metric() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).unwrap();
    let spot = read("deploy/kubernetes/worker.yaml");
    let od = read("deploy/kubernetes/worker-on-demand.yaml");
    assert!(spot.contains("matchLabels: {app.kubernetes.io/name: spotbatch, app.kubernetes.io/component: worker, spotbatch/capacity: spot}"));
    assert!(od.contains("matchLabels: {app.kubernetes.io/name: spotbatch, app.kubernetes.io/component: worker, spotbatch/capacity: on-demand}"));
    let capacity = |text: &str| {
        let at = text
            .find("name: SPOTBATCH_CAPACITY")
            .expect("SPOTBATCH_CAPACITY");
        text[at..]
            .lines()
            .nth(1)
            .and_then(|l| l.trim().strip_prefix("value:"))
            .map(|v| v.trim().to_string())
            .expect("its value")
    };
    assert_eq!(capacity(&spot), "spot");
    // clap's spelling of --capacity on-demand.
    assert_eq!(capacity(&od), "on-demand");
    assert!(od.contains("{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}"));
    assert!(
        !od.contains("value: spot"),
        "an on-demand worker tolerates no spot taint"
    );
    for needle in [
        "preStop:",
        "kill -TERM 1",
        "--notices=auto",
        "nvidia.com/gpu: 1",
    ] {
        assert!(od.contains(needle), "worker-on-demand.yaml lacks {needle}");
    }
    let keda = read("deploy/keda/scaledobject-prometheus.yaml");
    let emitted = emitted();
    assert_eq!(
        emitted.get("spotbatch_desired_workers").map(String::as_str),
        Some("gauge"),
        "the coordinator emits spotbatch_desired_workers"
    );
    let docs: Vec<&str> = keda.split("\n---\n").collect();
    assert_eq!(docs.len(), 2);
    for (doc, target, capacity) in [
        (docs[0], "spotbatch-worker", "spot"),
        (docs[1], "spotbatch-worker-on-demand", "on_demand"),
    ] {
        assert!(doc.contains("type: prometheus"), "{doc}");
        assert!(
            doc.contains(&format!("scaleTargetRef:\n    name: {target}\n")),
            "{doc}"
        );
        assert!(
            doc.contains(&format!(
                "spotbatch_desired_workers{{capacity=\"{capacity}\"}}"
            )),
            "{doc}"
        );
        assert!(
            doc.contains("threshold: \"1\""),
            "one worker per unit: {doc}"
        );
    }
    // The coordinator is told the caps the ScaledObjects and the node pool have.
    let coord = read("deploy/kubernetes/coordinator.yaml");
    assert!(coord.contains("--max-spot-workers=100") && docs[0].contains("maxReplicaCount: 100"));
    assert!(coord.contains("--max-on-demand-workers=4") && docs[1].contains("maxReplicaCount: 4"));
}

/// Metric names the code emits, with their kind, read from the `metrics::…!("name"` calls.
fn emitted() -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut files = Vec::new();
    for dir in ["src", "worker/src", "coordinator/src", "queue/src"] {
        collect_files(&root().join(dir), &mut files);
    }
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "rs"))
    {
        let text = std::fs::read_to_string(f).unwrap();
        for kind in ["counter", "gauge", "histogram"] {
            let pat = format!("metrics::{kind}!(");
            for (i, _) in text.match_indices(&pat) {
                let rest = text[i + pat.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    out.insert(name.to_string(), kind.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn the_dashboard_parses_and_references_only_emitted_metrics() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/spotbatch.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON parses");
    let emitted = emitted();
    assert!(emitted.len() >= 10, "{emitted:?}");
    let panels = dash["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Throughput",
        "Recovery time",
        "Preemption notices",
        "Leases released",
        "Queue depth",
        "dead letters",
        "Cost per 1k items",
        "Savings vs on-demand",
        "Work stealing",
        "Deadline: projected finish vs deadline",
        "Deadline: desired vs running workers by capacity",
        "suggested shard size",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel for {want}: {titles:?}"
        );
    }
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let mut names = Vec::new();
            let mut rest = expr;
            while let Some(i) = rest.find("spotbatch_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.push(&tail[..end]);
                rest = &tail[end..];
            }
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                let hist = ["_bucket", "_sum", "_count"].iter().find_map(|s| {
                    n.strip_suffix(s)
                        .filter(|b| emitted.get(*b).is_some_and(|k| k == "histogram"))
                });
                let (base, kind) = match hist {
                    Some(b) => (b, "histogram"),
                    None => (n, ""),
                };
                let got = emitted.get(base).unwrap_or_else(|| {
                    panic!("panel {:?} uses {n}, which nothing emits", p["title"])
                });
                if !kind.is_empty() {
                    assert_eq!(got, kind, "{n} in {expr}");
                }
                // Dollar totals are monotonic gauges (the metrics crate's counters are integers).
                if expr.contains(&format!("rate({n}")) && kind.is_empty() {
                    assert!(
                        got == "counter" || (got == "gauge" && n.ends_with("_dollars_total")),
                        "rate() over a {got}: {expr}"
                    );
                }
            }
        }
    }
}
