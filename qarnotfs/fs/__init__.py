"""The mounted filesystem: a POSIX-like view of a bucket (core, cache, staging, FUSE adapter).

Owns nothing itself; :mod:`qarnotfs.fs.core` holds the :class:`Filesystem` that implements
the semantics (see SEMANTICS.md), and :mod:`qarnotfs.fs.fuse_ops` is the only module that
talks to FUSE.
"""
