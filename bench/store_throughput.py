"""Store throughput: our S3Store vs raw boto3 upload_file/download_file, same moto server.

    python -m bench.store_throughput [--mib 256] [--repeats 2]

Prints medians and the ratio raw/ours for each direction (throughput ratio; target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from pathlib import Path

import boto3

from bench.common import print_ratios, race


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    raw = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    raw.create_bucket(Bucket=bucket)

    from tasks.core.store import S3Store

    ours = S3Store(bucket, "bench", endpoint_url=endpoint)
    tmp = Path(tempfile.mkdtemp(prefix="vf-bench-"))
    src = tmp / "artifact.bin"
    with open(src, "wb") as fh:
        for _ in range(args.mib):
            fh.write(os.urandom(1 << 20))
    up = race({"raw boto3 upload_file": lambda: raw.upload_file(str(src), bucket, "raw.bin"),
               "ours put_file": lambda: ours.put_file("ours.bin", src)},
              repeats=args.repeats, warmup=0)
    down = race({"raw boto3 download_file": lambda: raw.download_file(bucket, "raw.bin",
                                                                       str(tmp / "r.bin")),
                 "ours get_file": lambda: ours.get_file("ours.bin", tmp / "o.bin")},
                repeats=args.repeats, warmup=0)
    print_ratios(f"upload of {args.mib} MiB", up, "raw boto3 upload_file")
    print_ratios(f"download of {args.mib} MiB", down, "raw boto3 download_file")
    print(f"RESULT upload throughput ours/raw = "
          f"{up['raw boto3 upload_file'] / up['ours put_file']:.3f}, download = "
          f"{down['raw boto3 download_file'] / down['ours get_file']:.3f} (target >= 0.9)")
    server.stop()


if __name__ == "__main__":
    main()
