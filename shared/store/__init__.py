"""Object store port: a bucket, as the chain sees it."""

from shared.store.port import Generation, NotFound, ObjectStore, PreconditionFailed

__all__ = ["Generation", "NotFound", "ObjectStore", "PreconditionFailed"]
