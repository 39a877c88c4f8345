"""Typed config section of the round store (`store:` in layerloop.yaml); defaults fit the tiny CPU world."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StoreConfig(BaseModel):
    """Where rounds live and the limits every input image must meet.

    `uri` is a local path or any fsspec URL (`s3://bucket/prefix`, `memory://x`); `storage_options`
    goes to fsspec unchanged (credentials belong in the environment, never in this file).
    """

    model_config = ConfigDict(extra="forbid")

    uri: str = Field("./layerloop-store", description="local path or fsspec URL of the store root")
    storage_options: dict = Field(default_factory=dict, description="fsspec options (no secrets here)")
    shard_max_bytes: int = Field(64 * 2**20, ge=1024, description="roll over to a new shard past this size")
    shard_max_samples: int = Field(1000, ge=1, description="roll over to a new shard past this many samples")
    claim_lease_s: float = Field(
        120.0, ge=1, description="lease of a round's commit claim, renewed while committing; a claim past it may "
                                 "be taken over (a writer that died on another machine, e.g. on s3://)")
    max_image_pixels: int = Field(16 * 2**20, ge=64, description="larger images are refused (decompression bombs)")
    max_panel_side: int = Field(4096, ge=8, description="longest allowed panel side in pixels")
    min_panel_side: int = Field(8, ge=1, description="shortest allowed panel side in pixels")
    max_file_bytes: int = Field(64 * 2**20, ge=1024, description="larger input files are refused unread")

    def writer_options(self) -> dict:
        """The keyword options RoundStore.begin / begin_pool take from this config."""
        return {"shard_max_bytes": self.shard_max_bytes, "shard_max_samples": self.shard_max_samples,
                "claim_lease_s": self.claim_lease_s}

    @field_validator("uri")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("store.uri must be a path or fsspec URL, e.g. ./layerloop-store or s3://bucket/prefix")
        return v
