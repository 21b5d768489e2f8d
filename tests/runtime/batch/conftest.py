"""A local S3-compatible server (moto's server mode, loopback only) for the object-storage tests of glsnet batch."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def s3_server():
    """moto on 127.0.0.1 and a free port; AWS_* variables point s3fs (and Ray workers started after) at it."""
    pytest.importorskip("s3fs", reason="object storage needs the s3 extra: pip install 'glsnet-deploy[s3]'")
    server_module = pytest.importorskip("moto.server", reason="the local S3 server needs moto[server] (dev extra)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield settings
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket per test, named after it."""
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=False)
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    fs.mkdir(name)
    fs.invalidate_cache()
    return fs, name


def upload_folder(fs, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{prefix}/{path.relative_to(folder).as_posix()}")
    fs.invalidate_cache()
