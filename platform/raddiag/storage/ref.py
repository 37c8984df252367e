"""Where a dataset store lives: :class:`StoreRef`, its URL normalised once, safe to send to Ray.

A store URL arrives in several forms — a relative path, ``~/...``, ``file:///...``, ``s3://bucket/
prefix/`` — and every process that opens the store must read it the same way (Ray workers run in
other working directories). :class:`StoreRef` fixes the form once, when it is made:

- a local path (or ``file://`` URL) becomes an absolute path, ``~`` expanded, without a trailing ``/``;
- a remote URL (``s3://``, ``gs://``, ``memory://`` ...) is kept, minus trailing ``/``;
- ``endpoint_url`` (an S3-compatible server: MinIO, moto) travels with it; credentials never do
  (s3fs reads the AWS chain in the process that opens the store).

It holds two strings, so it pickles into a Ray task, actor or worker for a few bytes; the task opens
its own :class:`~raddiag.storage.store.Store` there (``ref.open()``): no filesystem client is ever
pickled. Make one from the config with :meth:`StoreRef.from_config` (or ``cfg.store.ref()``).
This module imports nothing heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


def is_remote(url: str) -> bool:
    """True for an object-store URL (``s3://``, ``gs://`` ...), False for a local path or ``file://``."""
    return "://" in url and not url.startswith("file://")


def normalise_url(url: str) -> str:
    """Local paths become absolute (so Ray workers in another cwd find them); remote URLs lose a '/'."""
    if is_remote(url):
        return url.rstrip("/")
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def storage_options(endpoint_url: str | None) -> dict[str, Any]:
    """fsspec options for a store URL. Credentials are never passed here: s3fs reads the AWS chain."""
    return {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}


@dataclass(frozen=True)
class StoreRef:
    """A store's location: ``url`` (normalised, see the module doc) and ``endpoint_url``.

    Equal refs name the same store; ``StoreRef(ref.url, ref.endpoint_url) == ref``.
    """

    url: str
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.strip():
            raise ValueError(f"store url {self.url!r}: expected a local path, file:// or s3:// URL")
        object.__setattr__(self, "url", normalise_url(self.url.strip()))
        object.__setattr__(self, "endpoint_url", (self.endpoint_url or None) if self.is_remote else None)

    @classmethod
    def from_config(cls, cfg: Any) -> StoreRef:
        """From a :class:`~raddiag.config.RadDiagConfig` or its ``store`` section."""
        store = getattr(cfg, "store", cfg)
        return cls(store.url, store.endpoint_url)

    def with_url(self, url: str) -> StoreRef:
        """Another store on the same server (``--store`` overrides, ``verify URL``)."""
        return StoreRef(url, self.endpoint_url)

    @property
    def is_remote(self) -> bool:
        return is_remote(self.url)

    def storage_options(self) -> dict[str, Any]:
        """fsspec options (the endpoint of a remote store; nothing for a local one)."""
        return storage_options(self.endpoint_url) if self.is_remote else {}

    def filesystem(self) -> tuple[Any, str]:
        """``(fsspec filesystem, root path)`` of this location, made in the calling process."""
        import fsspec

        if self.is_remote:
            return fsspec.core.url_to_fs(self.url, **self.storage_options())
        return fsspec.filesystem("file"), self.url

    def open(self, layout: Any = None) -> Any:
        """A :class:`~raddiag.storage.store.Store` for this process (cheap; not to be pickled)."""
        from raddiag.storage.store import Store

        return Store(self.url, self.endpoint_url, layout)

    def manifest(self, columns: dict[str, list[str]] | None = None) -> Any:
        """The current version's :class:`~raddiag.storage.store.Manifest` (reads ``dataset.json``;
        ``columns`` limits what is read of each table, see ``Store.manifest``)."""
        return self.open().manifest(columns)

    def __str__(self) -> str:
        return self.url
