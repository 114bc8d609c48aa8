"""Conformance suites for third-party backends (needs pytest).

Subclass a suite in your own test module, name the subclass ``Test...`` and
give it ``make_backend``; pytest then runs every contract test against your
backend::

    from cacheness.storage.testing import BlobBackendTests

    class TestMyBackend(BlobBackendTests):
        def make_backend(self, tmp_path):
            return MyBackend(tmp_path / "blobs")

``make_backend`` is called again with the same ``tmp_path`` to check that a
persistent backend sees what an earlier instance wrote (set
``persistent = False`` on the subclass for backends that forget on close).
Override the ``backend`` fixture instead when setup needs other fixtures.
"""

from cacheness.storage.testing._blob import BlobBackendTests
from cacheness.storage.testing._metadata import MetadataBackendTests, make_record

__all__ = ["BlobBackendTests", "MetadataBackendTests", "make_record"]
