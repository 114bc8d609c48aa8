"""Built-in type handlers, chosen by type (most specific first)."""

from cacheness.storage.handlers._bytes import BytesHandler
from cacheness.storage.handlers._pickle import PickleHandler

BUILTIN_HANDLERS = [BytesHandler, PickleHandler]

__all__ = ["BUILTIN_HANDLERS", "BytesHandler", "PickleHandler"]
