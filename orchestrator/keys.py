"""SSH keys: one client key per testbed, one host key per blade.

The host makes every key, so it knows each blade's host key before the blade
boots and can pin it in known_hosts; strict host-key checking stays on.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def write_keypair(path: Path, comment: str) -> str:
    """Write an OpenSSH ed25519 private key (0600) at ``path`` and its ``.pub``;
    return the public key line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    line = f"{public} {comment}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    Path(f"{path}.pub").write_text(line + "\n")
    return line


def known_hosts_line(port: int, public_line: str) -> str:
    """known_hosts entry for a blade reached through 127.0.0.1:port."""
    keytype, blob = public_line.split()[:2]
    return f"[127.0.0.1]:{port} {keytype} {blob}"
