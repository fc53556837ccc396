"""Publisher keys on the publisher's machine, and signing an artifact with one.

Private keys live in the key directory (``CLOUDLET_KEY_DIR``, else
``$XDG_CONFIG_HOME/cloudlet/keys``, else ``~/.config/cloudlet/keys``) as ``NAME.key``
(PKCS#8 PEM, mode 0600), or wherever ``--out`` put them; only the public half is sent
to the controller.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from cloudlet.cli._client import Client
from cloudlet.errors import ConflictError, InvalidInputError
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.signing import PublisherKey


def key_dir() -> Path:
    explicit = os.environ.get("CLOUDLET_KEY_DIR")
    if explicit:
        return Path(explicit)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "cloudlet" / "keys"


def key_path(name: str) -> Path:
    return key_dir() / f"{name}.key"


def write_key(key: PublisherKey, path: Path) -> None:
    """Write the private key to ``path`` (0600), refusing to replace a file there.

    Raises:
        ConflictError: ``path`` exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConflictError(f"{path} exists already: choose another name or --out") from None
    try:
        os.write(fd, key.to_pem())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def load_key(ref: str) -> tuple[PublisherKey, Path]:
    """The key called ``ref`` in the key directory, or the key file at path ``ref``.

    Raises:
        InvalidInputError: there is no such key file.
        ConfigError: the file is not an Ed25519 private key.
    """
    path = Path(ref).expanduser()
    if not path.is_file():
        path = key_path(ref)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(
            f"no publisher key {ref!r} (looked for {path}): make one with `cloudlet key create`"
        ) from exc
    return PublisherKey.from_pem(pem), path


def forget_key(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def local_digest(kind: ArtifactKind, file: Path) -> str:
    """The digest of a local artifact file: what the publisher built, not what anyone
    says it is.

    Raises:
        InvalidInputError: a qcow2 image (its id is the digest of its raw conversion,
            which the controller computes: sign it by its digest or name instead).
    """
    if kind is ArtifactKind.OVERLAY:
        from cloudlet.synthesis import read_manifest

        return read_manifest(file).root_digest.hex()
    from cloudlet.cli._upload import file_digest

    digest = file_digest(file)
    if digest is None:
        raise InvalidInputError(
            f"{file} is a qcow2 image: sign the uploaded image by its name or digest"
        )
    return digest


def sign_artifact(client: Client, kind: ArtifactKind, ref: str, key_ref: str) -> dict[str, Any]:
    """Sign an artifact and upload the signature. ``ref`` is a local file (its digest is
    computed here) or the artifact's name, digest or digest prefix at the controller.

    Returns the stored signature (the controller checked it first).
    """
    key, _ = load_key(key_ref)
    noun = "images" if kind is ArtifactKind.IMAGE else "overlays"
    file = Path(ref).expanduser()
    if file.is_file():
        digest = local_digest(kind, file)
    else:
        found = client.get(f"/v1/{noun}/{ref}")
        digest = found["digest"] if kind is ArtifactKind.IMAGE else found["id"]
    body = {"kid": key.kid, "signature": key.sign(kind, digest)}
    return client.post(f"/v1/{noun}/{digest}/signatures", body)
