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
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
    assert!(!text.contains("WARN"), "{text}");
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
