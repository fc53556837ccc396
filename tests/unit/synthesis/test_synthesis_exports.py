"""The public names of cloudlet.synthesis, pinned."""

from __future__ import annotations

import cloudlet.synthesis as synthesis


def test_public_names():
    assert sorted(synthesis.__all__) == sorted(
        [
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
    )
    for name in synthesis.__all__:
        assert getattr(synthesis, name) is not None
