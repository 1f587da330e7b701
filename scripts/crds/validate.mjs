// Validates KEDA and Karpenter manifests against their CRDs' OpenAPI schemas (as packaged by
// kubernetes-models), offline. usage: node validate.mjs FILE...   exit 1 on any failure.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import { NodePool } from "@kubernetes-models/karpenter/karpenter.sh/v1/NodePool";
import { EC2NodeClass } from "@kubernetes-models/karpenter/karpenter.k8s.aws/v1/EC2NodeClass";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";

const kinds = {
  "karpenter.sh/v1/NodePool": NodePool,
  "karpenter.k8s.aws/v1/EC2NodeClass": EC2NodeClass,
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": TriggerAuthentication,
};
let failed = false;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc) continue;
    const id = `${doc.apiVersion}/${doc.kind}`;
    const Kind = kinds[id];
    const name = `${file} ${doc.kind}/${doc.metadata?.name}`;
    if (!Kind) {
      console.log(`FAIL ${name}: no schema for ${id}`);
      failed = true;
      continue;
    }
    try {
      new Kind(doc).validate();
      console.log(`PASS ${name}`);
    } catch (e) {
      console.log(`FAIL ${name}: ${e.message}`);
      failed = true;
    }
  }
}
process.exit(failed ? 1 : 0);
