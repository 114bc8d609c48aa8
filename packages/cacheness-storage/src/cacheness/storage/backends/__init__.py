"""Built-in blob and metadata backends."""

from cacheness.storage.abc import BlobBackend, MetadataBackend
from cacheness.storage.backends._filesystem import FilesystemBlobBackend
from cacheness.storage.backends._json import JsonMetadataBackend
from cacheness.storage.backends._memory import MemoryBlobBackend, MemoryMetadataBackend
from cacheness.storage.backends._s3 import S3BlobBackend
from cacheness.storage.backends._sqlalchemy import SqlAlchemyMetadataBackend
from cacheness.storage.backends._sqlite import SqliteMetadataBackend

BUILTIN_BLOB_BACKENDS: list[type[BlobBackend]] = [
    FilesystemBlobBackend,
    MemoryBlobBackend,
    S3BlobBackend,
]
BUILTIN_METADATA_BACKENDS: list[type[MetadataBackend]] = [
    JsonMetadataBackend,
    MemoryMetadataBackend,
    SqlAlchemyMetadataBackend,
    SqliteMetadataBackend,
]

__all__ = [
    "BUILTIN_BLOB_BACKENDS",
    "BUILTIN_METADATA_BACKENDS",
    "FilesystemBlobBackend",
    "JsonMetadataBackend",
    "MemoryBlobBackend",
    "MemoryMetadataBackend",
    "SqlAlchemyMetadataBackend",
    "SqliteMetadataBackend",
]
