from __future__ import annotations

import pickle
from typing import Any, ClassVar

from cacheness.storage.abc import TypeHandler

__all__ = ["PickleHandler"]


class PickleHandler(TypeHandler):
    """Any picklable object, with pickle protocol 5. Last resort: lowest priority.

    ``safe = False``: unpickling runs code, so the store checks integrity and
    signatures before calling :meth:`loads`.
    """

    name: ClassVar[str] = "pickle"
    types: ClassVar[tuple[type, ...]] = (object,)
    priority: ClassVar[int] = -100
    safe: ClassVar[bool] = False

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=5)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)
