"""``@cached``: persistent memoisation of functions, methods and coroutines.

A decorated function computes the key of a call from its arguments,
normalised through the function's signature (``f(1)``, ``f(x=1)`` and
``f(1, y=<default>)`` are one call), looks it up in a cache, and runs the
body only on a miss. Everything that does not depend on the call (the
signature, the defaults, the key header, which arguments are ignored) is
worked out once, when the function is decorated.

Keys: ``<function identity>:<32 hex>``. The identity is the function's
``module.qualname`` (or ``key_prefix=``), so ``cache_clear()`` removes the
entries of one function by prefix, and two functions of the same name in
different modules never share entries. The hash covers the key-encoding
version, ``version=``, the parameter names and kinds, and each argument's
canonical encoding (``cacheness.keys``), in parameter order.

Which cache: ``cache_instance=`` when given; with cache options
(``cache_dir=``, ``memory_cache_entries=``... any ``CacheConfig`` field) a
cache of the decorator's own, opened on the first call, shared by every
decorated function with the same options and closed when the last of them is
garbage-collected or at interpreter exit; otherwise the process-wide
``get_cache()``. Nothing is opened at decoration time.

Stampedes: concurrent callers of one missing key in a process wait for one
computation. Processes sharing a cache directory coordinate through a lease
in the cache index (``lease_ttl_seconds``, renewed while the body runs): the
others poll for the result, and take over if the creator dies (its lease is
then no longer renewed and expires). A body that has run quickly (its last
eight computations each under a millisecond) runs without a lease, which would
cost more than another process computing the same key at the same time; one
slower computation brings the lease back.
"""

from cacheness.decorator._api import cache_if, cached
from cacheness.decorator._function import CachedFunction, CacheInfo

__all__ = ["CacheInfo", "CachedFunction", "cache_if", "cached"]
