"""Blobs as objects in an S3 bucket (AWS S3, MinIO, Ceph, moto ...): the team blob backend.

``S3BlobBackend.from_url("s3://bucket/prefix", endpoint_url=..., region=...)``
keeps blob ``k`` at object ``prefix/k``. boto3 is imported on first use, so
this module imports without it; the standard AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_DEFAULT_REGION``,
``AWS_PROFILE`` ...) and config files are honoured by boto3 itself.

Atomicity comes from S3: a PUT, and a multipart upload once completed,
replace the object whole, and an incomplete multipart upload is invisible.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, ClassVar, NoReturn
from urllib.parse import parse_qsl, unquote, urlparse

from cacheness.storage.abc import BlobBackend, BlobWriter, Buffer, chunks_of
from cacheness.storage.errors import (
    BlobNotFoundError,
    CacheBackendError,
    CacheConfigError,
    CacheError,
    CacheKeyError,
    CacheStorageError,
)

__all__ = ["S3BlobBackend"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'cacheness-storage[s3]'"
_SAFE = frozenset("0123456789abcdefghijklmnopqrstuvwxyz._-")
_MiB = 1024 * 1024
# Below this a blob goes up in one PUT; above it, as a multipart upload.
_DEFAULT_THRESHOLD = 8 * _MiB
_DEFAULT_PART = 8 * _MiB
# Bounds the temporary buffer when a reader asks for a huge readinto.
_READ_PIECE = 8 * _MiB
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})

_OPTIONS = (
    "endpoint_url",
    "region",
    "region_name",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "profile_name",
    "addressing_style",
    "client_config",
    "multipart_threshold",
    "multipart_chunksize",
    "max_concurrency",
    "spool_dir",
    "check_bucket",
)


def _is_driver_error(exc: BaseException) -> bool:
    """True for errors raised by boto3, botocore, s3transfer or the HTTP stack below them."""
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("botocore", "boto3", "s3transfer", "urllib3", "http")


class _S3Reader(io.RawIOBase):
    """A readable binary file over a ``get_object`` streaming body."""

    def __init__(self, backend: S3BlobBackend, key: str, body: Any, size: int) -> None:
        super().__init__()
        self._backend = backend
        self._key = key
        self._body = body
        self.size = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        # Fill the whole buffer (up to EOF): callers such as numpy's loader
        # read a known length in one call, and short reads would cost round trips.
        while filled < len(view):
            want = min(len(view) - filled, _READ_PIECE)
            with self._backend._errors("read", self._key):
                data = self._body.read(want)
            if not data:
                break
            view[filled : filled + len(data)] = data
            filled += len(data)
        return filled

    def readall(self) -> bytes:
        with self._backend._errors("read", self._key):
            data: bytes = self._body.read()
        return data

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _ChunksReader(io.RawIOBase):
    """A non-seekable file over a sequence of buffers, for the managed multipart upload."""

    def __init__(self, chunks: Sequence[Buffer]) -> None:
        super().__init__()
        self._chunks = [memoryview(c).cast("B") for c in chunks]
        self._i = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._i < len(self._chunks):
            chunk = self._chunks[self._i]
            n = min(len(view) - filled, len(chunk) - self._pos)
            view[filled : filled + n] = chunk[self._pos : self._pos + n]
            filled += n
            self._pos += n
            if self._pos == len(chunk):
                self._i += 1
                self._pos = 0
        return filled


class _S3Writer(BlobWriter):
    """Spools in memory, then to a temporary file, and uploads on ``commit``.

    Uploading only at commit means a deduplicated put (the store aborts the
    writer when the content is already stored) sends nothing over the network,
    and a killed writer leaves nothing in the bucket. A spooled file goes up
    by name, so the managed transfer reads each part from disk when it sends
    it instead of holding parts in memory.
    """

    def __init__(self, backend: S3BlobBackend) -> None:
        self._backend = backend
        self._buf: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self._path: str | None = None
        self._size = 0

    def write(self, data: Buffer) -> None:
        if self._buf is None:
            raise CacheError("this blob writer is already committed or aborted")
        n = memoryview(data).nbytes
        try:
            if self._file is None and self._size + n > self._backend.multipart_threshold:
                fd, self._path = tempfile.mkstemp(
                    prefix="cacheness-s3-", dir=self._backend.spool_dir
                )
                self._file = os.fdopen(fd, "wb")
                self._file.write(self._buf)
                self._buf = bytearray()
            if self._file is not None:
                self._file.write(data)
            else:
                self._buf += data
        except OSError as exc:
            self.abort()
            where = self._backend.spool_dir or tempfile.gettempdir()
            raise CacheStorageError(
                f"could not spool a blob to {where} before uploading it: {exc.strerror}; "
                "free space there or pass spool_dir=... in blob_backend_options",
                backend=self._backend.name,
            ) from exc
        self._size += n

    def commit(self, key: str) -> None:
        if self._buf is None:
            raise CacheError("this blob writer is already committed or aborted")
        try:
            if self._file is None:
                self._backend.put(key, self._buf)
            else:
                self._file.close()
                self._file = None
                assert self._path is not None
                self._backend._upload_file(key, self._path)
        finally:
            self.abort()

    def abort(self) -> None:
        self._buf = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None


class S3BlobBackend(BlobBackend):
    """Blobs as objects ``<prefix>/<key>`` in an S3 bucket.

    Options (``blob_backend_options`` of :class:`~cacheness.storage.BlobStore`):
    ``endpoint_url``, ``region`` (or ``region_name``), ``aws_access_key_id``,
    ``aws_secret_access_key``, ``aws_session_token``, ``profile_name``,
    ``addressing_style`` (``"path"`` or ``"virtual"``), ``client_config``
    (a ``botocore.config.Config``), ``multipart_threshold`` and
    ``multipart_chunksize`` (bytes), ``max_concurrency`` (upload threads),
    ``spool_dir`` (where streamed puts spool before upload) and
    ``check_bucket`` (check once, on first use, that the bucket exists).
    Anything left unset comes from boto3's usual sources (environment
    variables, ``~/.aws/config``, instance roles).

    The prefix belongs to one store: ``gc`` and ``verify`` treat every object
    directly under it that the store's metadata does not reference as an orphan.
    """

    name: ClassVar[str] = "s3"
    local: ClassVar[bool] = False  # a reused object is not downloaded to be hashed
    schemes: ClassVar[tuple[str, ...]] = ("s3",)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile_name: str | None = None,
        addressing_style: str | None = None,
        client_config: Any = None,
        multipart_threshold: int = _DEFAULT_THRESHOLD,
        multipart_chunksize: int = _DEFAULT_PART,
        max_concurrency: int = 4,
        spool_dir: str | None = None,
        check_bucket: bool = True,
    ) -> None:
        if importlib.util.find_spec("boto3") is None:
            raise CacheConfigError(
                f"the 's3' blob backend needs boto3, which is not installed: {INSTALL_HINT}",
                backend=self.name,
            )
        if not bucket or "/" in bucket:
            raise CacheConfigError(
                f"invalid S3 bucket name {bucket!r}; use blob_backend='s3://bucket/prefix'",
                backend=self.name,
            )
        if region is not None and region_name is not None and region != region_name:
            raise CacheConfigError(
                f"S3 options give two regions ({region!r} and {region_name!r}); pass one",
                backend=self.name,
            )
        if addressing_style not in (None, "auto", "path", "virtual"):
            raise CacheConfigError(
                f"addressing_style must be 'auto', 'path' or 'virtual', not {addressing_style!r}",
                backend=self.name,
            )
        if multipart_chunksize < 5 * _MiB:
            raise CacheConfigError(
                f"multipart_chunksize must be at least 5 MiB (S3's minimum part size), "
                f"not {multipart_chunksize}",
                backend=self.name,
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._base = f"{self.prefix}/" if self.prefix else ""
        self.endpoint_url = endpoint_url
        self.region = region if region is not None else region_name
        self._credentials = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        self.profile_name = profile_name
        self.addressing_style = addressing_style
        self.client_config = client_config
        self.multipart_threshold = max(int(multipart_threshold), 5 * _MiB)
        self.multipart_chunksize = int(multipart_chunksize)
        self.max_concurrency = max(1, int(max_concurrency))
        self.spool_dir = spool_dir
        self.check_bucket = check_bucket
        self._client: Any = None
        self._endpoint_used: str | None = None
        self._transfer_config: Any = None
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3BlobBackend:
        """``s3://bucket/prefix[?region=...&endpoint_url=...]``; keyword options win over the query."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise CacheConfigError(
                f"not an S3 URL: {url!r}; expected 's3://bucket/prefix'", backend=cls.name
            )
        merged: dict[str, Any] = dict(parse_qsl(parsed.query))
        merged.update(options)
        unknown = sorted(set(merged) - set(_OPTIONS))
        if unknown:
            raise CacheConfigError(
                f"unknown S3 option(s) {', '.join(map(repr, unknown))}; valid: "
                f"{', '.join(_OPTIONS)}",
                backend=cls.name,
            )
        for name in ("multipart_threshold", "multipart_chunksize", "max_concurrency"):
            if isinstance(merged.get(name), str):
                merged[name] = int(merged[name])
        if isinstance(merged.get("check_bucket"), str):
            merged["check_bucket"] = merged["check_bucket"].lower() not in ("0", "false", "no")
        return cls(unquote(parsed.netloc), unquote(parsed.path), **merged)

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3BlobBackend('s3://{self.bucket}/{self.prefix}'{where})"

    # ------------------------------------------------------------------ client

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created (and the bucket checked) on first use."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise CacheError(f"{self!r} is closed; open a new store", backend=self.name)
            if self._client is None:
                client = self._make_client()
                if self.check_bucket:
                    try:
                        self._check_bucket(client)
                    except BaseException:
                        client.close()
                        raise
                self._client = client
            return self._client

    def _make_client(self) -> Any:
        try:
            import boto3
            import boto3.s3.transfer
            from botocore.config import Config
        except ImportError as exc:
            raise CacheConfigError(
                f"the 's3' blob backend needs boto3: {INSTALL_HINT} ({exc})", backend=self.name
            ) from exc
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=max(10, 2 * self.max_concurrency),
        )
        if self.addressing_style is not None:
            config = config.merge(Config(s3={"addressing_style": self.addressing_style}))
        if self.client_config is not None:
            config = config.merge(self.client_config)
        creds = {k: v for k, v in self._credentials.items() if v is not None}
        with self._errors("connect to", None):
            session = boto3.session.Session(profile_name=self.profile_name, **creds)
            client = session.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )
        self._endpoint_used = client.meta.endpoint_url
        self._transfer_config = boto3.s3.transfer.TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
        )
        # s3transfer reads the parts of a file object into memory (10 queued by
        # default); this bounds that to about max_concurrency parts.
        self._transfer_config.max_in_memory_upload_chunks = self.max_concurrency
        return client

    def _check_bucket(self, client: Any) -> None:
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("403", "AccessDenied", "Forbidden"):
                # Object-only credentials may not see the bucket itself; the
                # object requests will say whether they work.
                logger.debug("no permission to check bucket %r exists; going on", self.bucket)
                return
            self._raise(exc, "use bucket", None)
        except Exception as exc:
            if _is_driver_error(exc):
                self._raise(exc, "use bucket", None)
            raise

    @contextmanager
    def _errors(self, action: str, key: str | None) -> Iterator[None]:
        """Turn boto3/botocore errors into cacheness errors (the original as ``__cause__``)."""
        try:
            yield
        except CacheError:
            raise
        except Exception as exc:
            if _is_driver_error(exc):
                self._raise(exc, action, key)
            raise

    def _raise(self, exc: BaseException, action: str, key: str | None) -> NoReturn:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"s3://{self.bucket}/{self.prefix}"
        endpoint = self._endpoint_used or self.endpoint_url or "the S3 endpoint"
        what = (
            f"could not {action} blob {key!r} in {where}" if key else f"could not {action} {where}"
        )
        cause = exc
        # boto3's managed transfer wraps the ClientError it got.
        if not isinstance(cause, ClientError) and isinstance(exc.__cause__, ClientError):
            cause = exc.__cause__
        if isinstance(cause, ClientError):
            code = _error_code(cause)
            if code in _NOT_FOUND and key is not None:
                raise BlobNotFoundError(
                    f"blob {key!r} is missing from {where}", key=key, backend=self.name
                ) from exc
            if code in ("NoSuchBucket", "404", "NotFound"):
                raise CacheConfigError(
                    f"{what}: bucket {self.bucket!r} does not exist at {endpoint}; create it "
                    f"(e.g. `aws s3 mb s3://{self.bucket}`) or fix blob_backend / endpoint_url",
                    key=key,
                    backend=self.name,
                ) from exc
            if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId"):
                hint = (
                    "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                    "blob_backend_options) and that they allow s3:GetObject, s3:PutObject, "
                    f"s3:DeleteObject and s3:ListBucket on {self.bucket!r}"
                )
            elif code in ("SignatureDoesNotMatch",):
                hint = "the secret key does not match the access key id; check the credentials"
            elif code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed"):
                hint = (
                    f"bucket {self.bucket!r} is in another region; pass region=... in "
                    "blob_backend_options or set AWS_DEFAULT_REGION"
                )
            else:
                hint = "see the cause below; retry, or check the endpoint and bucket"
            raise CacheBackendError(
                f"{what}: S3 error {code}: {cause}; {hint}", key=key, backend=self.name
            ) from exc
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            raise CacheConfigError(
                f"{what}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, use a profile, or pass aws_access_key_id / "
                "aws_secret_access_key in blob_backend_options",
                key=key,
                backend=self.name,
            ) from exc
        if isinstance(exc, EndpointConnectionError):
            raise CacheBackendError(
                f"{what}: cannot reach {endpoint} ({exc}); check endpoint_url / "
                "AWS_ENDPOINT_URL and that the S3 service is up",
                key=key,
                backend=self.name,
            ) from exc
        raise CacheBackendError(
            f"{what}: {type(exc).__name__}: {exc}; retry, or check the endpoint and network",
            key=key,
            backend=self.name,
        ) from exc

    # --------------------------------------------------------------- objects

    def object_key(self, key: str) -> str:
        """The S3 object name of blob ``key``."""
        if not key or not _SAFE.issuperset(key) or key in (".", ".."):
            raise CacheKeyError(
                f"blob key {key!r} is not a valid blob name", key=key, backend=self.name
            )
        return self._base + key

    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        name = self.object_key(key)
        chunks = chunks_of(data)
        total = sum(memoryview(c).nbytes for c in chunks)
        if total < self.multipart_threshold:
            body = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
            with self._errors("write", key):
                self.client.put_object(Bucket=self.bucket, Key=name, Body=body)
            return
        with _ChunksReader(chunks) as reader:
            self._upload(key, reader, total)

    def _upload(self, key: str, src: BinaryIO | Any, size: int) -> None:
        name = self.object_key(key)
        client = self.client
        with self._errors("write", key):
            if size < self.multipart_threshold:
                client.put_object(Bucket=self.bucket, Key=name, Body=src.read())
            else:
                # Managed transfer: parallel parts; S3 publishes the object only
                # when the upload completes, and s3transfer aborts it on failure.
                client.upload_fileobj(src, self.bucket, name, Config=self._transfer_config)

    def _upload_file(self, key: str, path: str) -> None:
        name = self.object_key(key)
        client = self.client
        with self._errors("write", key):
            client.upload_file(path, self.bucket, name, Config=self._transfer_config)

    def put_file(self, key: str, src: BinaryIO) -> None:
        with self.writer() as w:
            while chunk := src.read(_READ_PIECE):
                w.write(chunk)
            w.commit(key)

    def writer(self) -> BlobWriter:
        return _S3Writer(self)

    def get(self, key: str) -> bytes:
        name = self.object_key(key)
        with self._errors("read", key):
            response = self.client.get_object(Bucket=self.bucket, Key=name)
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
        return data

    def open_read(self, key: str) -> BinaryIO:
        name = self.object_key(key)
        with self._errors("read", key):
            response = self.client.get_object(Bucket=self.bucket, Key=name)
        return _S3Reader(self, key, response["Body"], int(response["ContentLength"]))  # type: ignore[return-value]

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        name = self.object_key(key)
        client = self.client
        try:
            response: dict[str, Any] = client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            # HEAD has no body, so a missing object and a missing bucket both
            # read 404; the bucket was checked on first use.
            if _error_code(exc) in _NOT_FOUND:
                return None
            self._raise(exc, "check", key)
        except Exception as exc:
            if _is_driver_error(exc):
                self._raise(exc, "check", key)
            raise
        return response

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise BlobNotFoundError(
                f"blob {key!r} is missing from s3://{self.bucket}/{self.prefix}",
                key=key,
                backend=self.name,
            )
        return int(head["ContentLength"])

    def delete(self, key: str) -> bool:
        # S3's DELETE succeeds whether or not the object exists; HEAD tells us which.
        if not self.exists(key):
            return False
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        return True

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        client = self.client
        # Delimiter "/" keeps objects of a store under a deeper prefix out of
        # this one's listing (and out of reach of its gc).
        with self._errors("list", None):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._base + prefix, Delimiter="/"
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    name = item["Key"][len(self._base) :]
                    if name and _SAFE.issuperset(name):
                        yield name

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _error_code(exc: Any) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", ""))
