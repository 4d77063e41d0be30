#!/usr/bin/env python3
"""Write a container image archive without a daemon or a registry (Python standard library only).

    oci.py OUT.tar --name REF [--layer PATH]... [--user U] [--workdir D] [--env K=V]...
           [--entrypoint JSON] [--cmd JSON] [--label K=V]...

Each --layer is one layer, bottom first: a directory (packed with every entry owned by root,
mode kept, mtime 0, names sorted, so the same tree gives the same digest) or an existing tar
(used as it is, e.g. a Debian root filesystem made by mmdebstrap). Files under a directory layer
may set their owner with a sidecar: a directory layer's `.owners` file (not packed) lists
`PATH UID GID` lines, PATH relative to the layer's root.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) and, in the same
tar, a `docker save` manifest.json: `ctr images import`, `docker load`, `podman load` and
`skopeo copy oci-archive:` all read it. The reference name is kept
(`io.containerd.image.name`, `org.opencontainers.image.ref.name`, docker RepoTags).
Prints `NAME@sha256:MANIFEST_DIGEST` on stdout.
"""

import argparse
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile

EPOCH = "1970-01-01T00:00:00Z"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dir_layer(root: str) -> bytes:
    owners = {}
    sidecar = os.path.join(root, ".owners")
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    owners[parts[0].strip("/")] = (int(parts[1]), int(parts[2]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        paths = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                if rel == ".owners":
                    continue
                paths.append((rel, full))
        for rel, full in sorted(paths):
            info = tf.gettarinfo(full, arcname=rel)
            info.uid, info.gid = owners.get(rel, (0, 0))
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isreg():
                with open(full, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--name", required=True, help="the image reference, e.g. ghcr.io/sluice-dev/sluice:0.1.0")
    p.add_argument("--layer", action="append", default=[], required=True)
    p.add_argument("--user", default="")
    p.add_argument("--workdir", default="/")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--entrypoint", type=json.loads, default=None)
    p.add_argument("--cmd", type=json.loads, default=None)
    p.add_argument("--label", action="append", default=[])
    # The layers hold this machine's binaries and Debian packages: the image is for its architecture.
    machine = platform.machine()
    p.add_argument("--architecture", default={"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine))
    a = p.parse_args()

    name = a.name if ":" in a.name.rsplit("/", 1)[-1] else a.name + ":latest"
    layers = []
    for path in a.layer:
        if os.path.isdir(path):
            layers.append(dir_layer(path))
        else:
            with open(path, "rb") as f:
                layers.append(f.read())
    diff_ids = [digest(layer) for layer in layers]
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + a.env
    config = {"Env": env, "WorkingDir": a.workdir, "Labels": dict(kv.split("=", 1) for kv in a.label)}
    if a.user:
        config["User"] = a.user
    if a.entrypoint is not None:
        config["Entrypoint"] = a.entrypoint
    if a.cmd is not None:
        config["Cmd"] = a.cmd
    config_blob = json.dumps(
        {
            "architecture": a.architecture,
            "os": "linux",
            "created": EPOCH,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": EPOCH, "created_by": f"images/oci.py layer {i}"} for i in range(len(layers))],
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(config_blob),
                "size": len(config_blob),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(layer)}
                for d, layer in zip(diff_ids, layers)
            ],
        },
        sort_keys=True,
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": a.architecture, "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()

    def blob(d: str) -> str:
        return "blobs/sha256/" + d.split(":", 1)[1]

    docker = json.dumps([{"Config": blob(digest(config_blob)), "RepoTags": [name], "Layers": [blob(d) for d in diff_ids]}])
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w") as out:
        written = set()

        def put(path: str, data: bytes) -> None:
            if path in written:
                return
            written.add(path)
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), stat.S_IFREG | 0o644, 0
            out.addfile(info, io.BytesIO(data))

        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for d, layer in zip(diff_ids, layers):
            put(blob(d), layer)
        put(blob(digest(config_blob)), config_blob)
        put(blob(digest(manifest)), manifest)
        put("index.json", index)
        put("manifest.json", docker.encode())
    os.replace(tmp, a.out)
    print(f"{name}@{digest(manifest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
