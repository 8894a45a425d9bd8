"""rq job functions of the embedding worker (enqueued by dotted path from the API)."""

from __future__ import annotations

from contract.payloads import EmbedJob


def embed(payload: dict) -> EmbedJob:
    """Embeddings of a request's inputs: the engine batches them with other requests' inputs."""
    return EmbedJob.model_validate(payload)
