"""VM synthesis: overlays between a base image and a customized VM (disk and memory).

Format spec: docs/overlay-format.md. Create with create_overlay(), rebuild with
apply_overlay() or, while segments still arrive, with StreamingApplier.
"""

from __future__ import annotations

from .apply import FORMATS, apply_overlay
from .create import DEFAULT_LEVEL, MAX_LEVEL, CreateSummary, create_overlay
from .format import CHUNK_SIZE, KIND_NAMES, VERSION, Manifest
from .index import BaseIndex, base_digest, build_index
from .info import overlay_info, verify_overlay
from .source import ByteSource, FileSource, read_manifest
from .stream import ApplySummary, StreamingApplier

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_LEVEL",
    "FORMATS",
    "KIND_NAMES",
    "MAX_LEVEL",
    "VERSION",
    "ApplySummary",
    "BaseIndex",
    "ByteSource",
    "CreateSummary",
    "FileSource",
    "Manifest",
    "StreamingApplier",
    "apply_overlay",
    "base_digest",
    "build_index",
    "create_overlay",
    "overlay_info",
    "read_manifest",
    "verify_overlay",
]
