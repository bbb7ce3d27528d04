"""A stand-in for cloud object storage: moto's S3 server on 127.0.0.1, for the parts that read only from a bucket.

Ray Serve LLM loads LoRA adapters from `s3://` (or gs/abfss) folders only; with this server and the environment
`s3_env(...)` returns (endpoint, region, dummy keys), boto3 in any process, a Serve replica included, talks to the
loopback bucket over real HTTP instead of AWS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REGION = "us-east-1"


@contextmanager
def loopback_s3() -> Iterator[str]:
    """Run the S3 stand-in for the block; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    from sefl_ray.testing.ports import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_env(endpoint_url: str) -> dict[str, str]:
    """What a process needs to use the stand-in as its S3: boto3 reads every one of these from the environment."""
    return {"AWS_ENDPOINT_URL": endpoint_url, "AWS_ACCESS_KEY_ID": "loopback", "AWS_SECRET_ACCESS_KEY": "loopback",
            "AWS_DEFAULT_REGION": REGION}


def upload_folder(endpoint_url: str, folder: Path, uri: str) -> str:
    """Copy `folder` to `s3://bucket/prefix` (creating the bucket); returns the URI."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=REGION, aws_access_key_id="loopback",
                      aws_secret_access_key="loopback")
    if bucket not in {entry["Name"] for entry in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}".lstrip("/"))
    return uri
