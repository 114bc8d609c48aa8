"""The shared generation counter: raised after commits, in any order, never lowered."""

from __future__ import annotations

from pathlib import Path

from cacheness.policy import Generation


def test_publish_raises_and_never_lowers_across_mappings(tmp_path: Path) -> None:
    a, b = Generation(tmp_path / "gen"), Generation(tmp_path / "gen")
    try:
        a.publish(10)
        assert b.read() == 10  # one file, seen by every mapping
        b.publish(7)  # a writer that committed earlier, publishing late
        assert a.read() == b.read() == 10
        b.publish(11)
        assert a.read() == 11
    finally:
        a.close()
        b.close()


def test_publish_in_memory_and_after_close(tmp_path: Path) -> None:
    mem = Generation(None)
    mem.publish(3)
    mem.publish(2)
    assert mem.read() == 3
    g = Generation(tmp_path / "gen")
    g.close()
    g.publish(5)  # a closed counter ignores it instead of failing
    assert Generation(tmp_path / "gen").read() == 0
