"""Object storage through fsspec: a local folder by default, any S3 API in production.

Keys are ``/``-separated paths below the store's root. Writes are atomic: a local write
goes to a temporary file that is renamed into place; an S3 PUT is atomic per object.
Readers therefore never see half a file, and a snapshot is only visible once its manifest
(written last) exists.

Any failure to reach the store (a refused connection, a missing bucket, denied credentials)
is a :class:`~flywheel.errors.StoreError` naming the store URL and endpoint; a missing S3
bucket says so and that it must be created first.
"""

from __future__ import annotations

import logging
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec

from flywheel.config import Settings
from flywheel.errors import FlywheelError, NotFound, StoreError

__all__ = ["ObjectStore", "open_store"]

log = logging.getLogger("flywheel.data.store")


class ObjectStore:
    """A root URL plus an fsspec filesystem. Build it with :func:`open_store`."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}
        self.is_local = "://" not in url or url.startswith("file://")
        self.protocol = "file" if self.is_local else url.split("://", 1)[0]
        client_kwargs = self.storage_options.get("client_kwargs") or {}
        self.endpoint: str | None = client_kwargs.get("endpoint_url")
        self._bucket_seen = False
        try:
            if self.is_local:
                self.root = str(Path(url.removeprefix("file://")).expanduser().resolve())
                self.fs = fsspec.filesystem("file")
            else:
                protocol = url.split("://", 1)[0]
                self.root = url.split("://", 1)[1].rstrip("/")
                self.fs = fsspec.filesystem(protocol, **self.storage_options)
        except ImportError as exc:
            raise StoreError(
                f"The object store {url!r} needs an optional package: {exc}. "
                "Fix: pip install 'flywheel[s3]'.",
                url=url,
            ) from exc

    def path(self, key: str) -> str:
        """The filesystem path (without protocol) of a key."""
        return posixpath.join(self.root, key.lstrip("/"))

    def uri(self, key: str) -> str:
        """A full URI for a key (what a user can paste into other tools)."""
        return self.path(key) if self.is_local else f"{self.url.split('://')[0]}://{self.path(key)}"

    # ------------------------------------------------------------ errors

    def _where(self) -> str:
        return f"{self.url!r}" + (f" (endpoint {self.endpoint})" if self.endpoint else "")

    def _bucket(self) -> str:
        return self.root.split("/", 1)[0]

    def _bucket_missing(self) -> bool:
        """True only when an S3 API says the store's bucket does not exist (not when it
        cannot be asked)."""
        if self.protocol not in ("s3", "s3a") or self._bucket_seen:
            return False
        try:
            self.fs.call_s3("head_bucket", Bucket=self._bucket())
        except FileNotFoundError:
            return True
        except Exception:  # unreachable, denied: reported by the caller's error
            return False
        self._bucket_seen = True
        return False

    def _missing_bucket_error(self) -> StoreError:
        bucket = self._bucket()
        endpoint = f" --endpoint-url {self.endpoint}" if self.endpoint else ""
        return StoreError(
            f"The bucket {bucket!r} of the object store {self._where()} does not exist. "
            f"Fix: create the bucket first (e.g. `aws s3 mb s3://{bucket}{endpoint}`), or "
            "correct store.url / FLYWHEEL_STORE__URL.",
            url=self.url,
            endpoint=self.endpoint,
            bucket=bucket,
        )

    def _error(self, action: str, exc: BaseException) -> StoreError:
        """``exc`` (from fsspec, s3fs, botocore, the OS) as a StoreError that says where."""
        if isinstance(exc, FileNotFoundError) and self._bucket_missing():
            return self._missing_bucket_error()
        if self.is_local:
            fix = "check the store folder (store.url) exists and is writable"
        else:
            fix = (
                "check store.url"
                + (" and store.endpoint_url" if self.endpoint else "")
                + ", that the server is running and reachable, and the credentials"
            )
        return StoreError(
            f"Cannot {action} the object store {self._where()}: {exc}. Fix: {fix}.",
            url=self.url,
            endpoint=self.endpoint,
        )

    # ------------------------------------------------------------ objects

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self.path(key)))
        except Exception as exc:
            raise self._error(f"check {key!r} in", exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically (replacing any previous object)."""
        with self.open_write(key) as fh:
            fh.write(data)

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """A binary file to write; the object appears at ``key`` only if the block succeeds."""
        target = self.path(key)
        try:
            if self.is_local:
                os.makedirs(posixpath.dirname(target), exist_ok=True)
                tmp = f"{target}.tmp-{uuid.uuid4().hex}"
                try:
                    with open(tmp, "wb") as fh:
                        yield fh
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            else:
                # S3 uploads become visible only when the (multipart) upload completes;
                # an exception inside the block aborts it, leaving nothing behind.
                with self.fs.open(target, "wb") as fh:
                    yield fh
        except Exception as exc:
            if isinstance(exc, FlywheelError) or not _from_store(exc):
                raise  # the caller's own error, raised inside the block
            raise self._error(f"write {key!r} to", exc) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            with self.fs.open(self.path(key), "rb") as fh:
                data: bytes = fh.read()
                return data
        except FileNotFoundError as exc:
            raise self._not_found(key, exc) from exc
        except Exception as exc:
            raise self._error(f"read {key!r} from", exc) from exc

    def _not_found(self, key: str, exc: FileNotFoundError) -> FlywheelError:
        if self._bucket_missing():
            return self._missing_bucket_error()
        return NotFound(f"No object {key!r} in the store {self.url!r}.", key=key)

    @contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        try:
            fh = self.fs.open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise self._not_found(key, exc) from exc
        except Exception as exc:
            raise self._error(f"read {key!r} from", exc) from exc
        with fh:
            yield fh

    def list(self, prefix: str) -> list[str]:
        """Keys directly below ``prefix`` (a folder), sorted; empty if it does not exist."""
        base = self.path(prefix).rstrip("/")
        try:
            # Listings are cached per process (s3fs); another process may have written since.
            self.fs.invalidate_cache(base)
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError as exc:
            if self._bucket_missing():
                raise self._missing_bucket_error() from exc
            return []
        except Exception as exc:
            raise self._error(f"list {prefix!r} in", exc) from exc
        root = self.root.rstrip("/") + "/"
        keys = [str(e).removeprefix(root) for e in entries]
        return sorted(k for k in keys if ".tmp-" not in k)


def _from_store(exc: BaseException) -> bool:
    """Whether ``exc`` came from the storage layer (the OS, fsspec, s3fs, botocore, aiohttp),
    not from code that was writing into an open object."""
    module = type(exc).__module__.split(".", 1)[0]
    return isinstance(exc, OSError | ValueError) or module in _STORE_MODULES


_STORE_MODULES = {"botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp"}


def open_store(settings: Settings) -> ObjectStore:
    """The object store named by ``settings.store``."""
    url = settings.store.url or str(settings.home / "store")
    options: dict[str, Any] = {}
    if url.startswith("s3://"):
        client_kwargs: dict[str, Any] = {}
        if settings.store.endpoint_url:
            client_kwargs["endpoint_url"] = settings.store.endpoint_url
        if settings.store.region:
            client_kwargs["region_name"] = settings.store.region
        options = {"client_kwargs": client_kwargs} if client_kwargs else {}
    return ObjectStore(url, options)
