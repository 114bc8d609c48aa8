"""Built-in type handlers, chosen by type (most specific first).

numpy, pandas and polars values are recognised by their type's module, so
none of those libraries is imported until a value of theirs is stored or
loaded. The dill handler is registered only when dill is installed.
"""

from importlib.util import find_spec

from cacheness.storage.abc import TypeHandler
from cacheness.storage.handlers._bytes import BytesHandler
from cacheness.storage.handlers._framing import FrameReader, FrameWriter
from cacheness.storage.handlers._numpy import NumpyHandler
from cacheness.storage.handlers._pandas import PandasHandler
from cacheness.storage.handlers._pickle import DillHandler, PickleHandler
from cacheness.storage.handlers._polars import PolarsHandler

BUILTIN_HANDLERS: list[type[TypeHandler]] = [
    BytesHandler,
    NumpyHandler,
    PandasHandler,
    PolarsHandler,
    PickleHandler,
]
if find_spec("dill") is not None:
    BUILTIN_HANDLERS.append(DillHandler)

__all__ = [
    "BUILTIN_HANDLERS",
    "BytesHandler",
    "DillHandler",
    "FrameReader",
    "FrameWriter",
    "NumpyHandler",
    "PandasHandler",
    "PickleHandler",
    "PolarsHandler",
]
