#!/usr/bin/env python3
"""S3 and SQS chores for the end-to-end tests, against the endpoint in SPOTBATCH_TEST_S3_ENDPOINT
(moto's server, started by `make test`). Uses boto3, which moto brings.

  aws.py mkbucket BUCKET
  aws.py upload DIR s3://BUCKET/PREFIX        (every file below DIR, keys relative to it)
  aws.py rows s3://BUCKET/PREFIX              (prints every row of every part-*.jsonl, one per line)
  aws.py count s3://BUCKET/PREFIX SUFFIX [PART] (prints how many keys below PREFIX end in SUFFIX and contain PART)
  aws.py send QUEUE_URL BODY_HEX              (puts a raw message on a queue)
"""
import os
import sys

import boto3


def client(kind):
    return boto3.client(kind, endpoint_url=os.environ["SPOTBATCH_TEST_S3_ENDPOINT"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def split(uri):
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.rstrip("/")


def keys(s3, bucket, prefix):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def main() -> int:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "mkbucket":
        client("s3").create_bucket(Bucket=args[0])
    elif cmd == "upload":
        s3 = client("s3")
        bucket, prefix = split(args[1])
        for root, _, files in os.walk(args[0]):
            for f in files:
                path = os.path.join(root, f)
                rel = os.path.relpath(path, args[0]).replace(os.sep, "/")
                s3.upload_file(path, bucket, f"{prefix}/{rel}" if prefix else rel)
    elif cmd == "rows":
        s3 = client("s3")
        bucket, prefix = split(args[0])
        for key in sorted(keys(s3, bucket, prefix)):
            if key.rsplit("/", 1)[-1].startswith("part-") and key.endswith(".jsonl"):
                sys.stdout.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8"))
    elif cmd == "count":
        s3 = client("s3")
        bucket, prefix = split(args[0])
        within = args[2] if len(args) > 2 else ""
        print(sum(1 for k in keys(s3, bucket, prefix) if k.endswith(args[1]) and within in k))
    elif cmd == "send":
        client("sqs").send_message(QueueUrl=args[0], MessageBody=bytes.fromhex(args[1]).decode("latin-1"))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
