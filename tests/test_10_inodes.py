"""Units of the mount's view that need no server: inode numbers (inodes.py), the times
the mount shows but does not store (viewtimes.py), and the path map both use."""

from __future__ import annotations

import pytest

from qarnotfs.fs import inodes
from qarnotfs.fs.attrs import Attributes
from qarnotfs.fs.inodes import ROOT_INODE, InodeTable
from qarnotfs.fs.pathmap import PathMap
from qarnotfs.fs.viewtimes import ViewTimes


def test_numbers_are_deterministic_per_prefix_and_the_root_is_one() -> None:
    one, other = InodeTable("pre"), InodeTable("pre")
    assert one.number("/") == ROOT_INODE
    assert one.number("/a/b") == other.number("/a/b") != one.number("/a/c")
    assert InodeTable("elsewhere").number("/a/b") != one.number("/a/b")
    assert all(1 < one.number(f"/f{i}") < 2**63 for i in range(1000))


def test_a_rename_keeps_numbers_at_and_under_the_new_name() -> None:
    table = InodeTable()
    before = {p: table.number(p) for p in ("/a", "/a/x", "/a/x/y", "/f")}
    table.renamed("/a", "/b")
    table.renamed("/f", "/b/x/f")
    assert [table.number(p) for p in ("/b", "/b/x", "/b/x/y", "/b/x/f")] == \
        [before["/a"], before["/a/x"], before["/a/x/y"], before["/f"]]
    # New objects at the old names get other numbers, stable from then on.
    reused = [table.number(p) for p in ("/a", "/a/x", "/a/x/y", "/f")]
    assert not set(reused) & set(before.values())
    assert [table.number(p) for p in ("/a", "/a/x", "/a/x/y", "/f")] == reused
    # Moving back and forth keeps the object's number.
    table.renamed("/b/x", "/c")
    table.renamed("/c", "/b/x")
    assert table.number("/b/x/y") == before["/a/x/y"]


def test_a_name_renamed_away_from_inside_a_renamed_folder_is_not_reused() -> None:
    table = InodeTable()
    deep = table.number("/a/x")
    table.renamed("/a", "/b")
    table.renamed("/b/x", "/c")  # the object of /a/x is now /c
    assert table.number("/c") == deep
    assert table.number("/b/x") != deep, "a new /b/x is another object"


def test_a_folder_rename_costs_one_entry_and_removals_free_them() -> None:
    table = InodeTable()
    numbers = [table.number(f"/big/f{i}") for i in range(10_000)]
    table.renamed("/big", "/moved")
    assert len(table) == 1
    assert [table.number(f"/moved/f{i}") for i in range(10_000)] == numbers
    table.renamed("/moved/f1", "/one")
    table.removed("/moved")
    table.removed("/one")
    assert len(table) == 0


def test_a_replaced_target_loses_its_number_to_the_moved_object() -> None:
    table = InodeTable()
    source, target = table.number("/s"), table.number("/t")
    table.renamed("/s", "/t")
    assert table.number("/t") == source != target


def test_a_hash_collision_gives_the_second_identity_another_number(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = inodes._hash
    # On purpose: every path of this test hashes to one number, except fresh identities.
    monkeypatch.setattr(inodes, "_hash",
                        lambda identity: real(identity) if identity[0] == "\0" else 42)
    table = InodeTable()
    first, second = table.number("/a"), table.number("/b")
    assert first == 42 and second != first
    assert (table.number("/a"), table.number("/b")) == (first, second)


def test_path_map_moves_and_drops_trees_and_is_bounded() -> None:
    paths: PathMap[int] = PathMap(maxsize=3)
    paths.set("/a/b", 1)
    paths.set("/a/b/c", 2)
    paths.set("/ab", 3)
    paths.move_tree("/a", "/z")
    assert (paths.get("/z/b"), paths.get("/z/b/c"), paths.get("/ab")) == (1, 2, 3)
    paths.set("/new", 4)  # over the bound: the least recently set goes
    assert paths.get("/ab") is None and len(paths) == 3
    paths.drop_tree("/z")
    assert len(paths) == 1 and paths.tree("/z") == []


def test_view_times_raise_stored_times_only() -> None:
    times = ViewTimes()
    stored = Attributes(0o40755, 0, 0, 0, atime_ns=5, mtime_ns=10, ctime_ns=10, nlink=2)
    assert times.apply("/d", stored) is stored
    times.entries_changed("/d", 20)
    shown = times.apply("/d", stored)
    assert (shown.mtime_ns, shown.ctime_ns, stored.mtime_ns) == (20, 20, 10)
    times.status_changed("/d/f", 30)
    times.renamed("/d", "/e")
    file = Attributes(0o100644, 1, 0, 0, 1, 2, 3)
    assert times.apply("/e/f", file).ctime_ns == 30 and times.apply("/e/f", file).mtime_ns == 2
    later = Attributes(0o40755, 0, 0, 0, 5, 40, 40, nlink=2)
    assert times.apply("/e", later) is later, "stored times later than the view win"
    times.removed("/e")
    assert times.apply("/e/f", file) is file


def test_renaming_the_old_home_of_a_moved_folder_changes_nothing_for_it() -> None:
    table = InodeTable()
    inside = table.number("/p/a/x")
    table.renamed("/p/a", "/b")
    table.renamed("/p", "/q")  # the folder /b came from moves: /b is not under it
    assert table.number("/b/x") == inside
    assert table.numbers("/b", ["x"]) == [inside]
