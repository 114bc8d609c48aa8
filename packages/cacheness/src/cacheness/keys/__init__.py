"""Cache keys: a canonical, versioned encoding of key parameters, hashed with XXH3-128.

The key of ``cache.put(data, model="x", version=1)`` is the same in every
process, run, platform and supported Python version, because it never goes
through ``hash()`` (salted per process), ``repr()`` (numpy truncates large
arrays) or plain pickle (set order follows the salted ``hash()``).

Every value is written as a type tag followed by length-prefixed bytes, so
``1``, ``1.0``, ``"1"`` and ``True`` differ, a list differs from a tuple, and
no two different values can run into each other. Dict items and set members
are sorted by their encoded bytes, so their order does not matter. Large
values (arrays, frames, files) are reduced to a digest of their buffers.

:data:`KEY_VERSION` names this encoding. Changing what any value encodes to
changes keys users already have on disk, so it needs a deliberate bump;
``tests/data/key_stability.json`` fails the build otherwise.
"""

from cacheness.keys._encoder import encode_value, value_digest
from cacheness.keys._key import KEY_VERSION, RESERVED_NAMES, make_key, render_params

__all__ = [
    "KEY_VERSION",
    "RESERVED_NAMES",
    "encode_value",
    "make_key",
    "render_params",
    "value_digest",
]
