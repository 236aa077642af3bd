"""store: the annotation store, where every annotator's saves are kept (append-only, versioned, conflict-checked).

- :mod:`.database`: :class:`~.database.AnnotationStore`, the schema and every operation once, in SQL both engines run;
- :mod:`.backends` (SQLite) and :mod:`.postgres` (PostgreSQL): what differs per engine;
- :mod:`.location`: a file path or ``postgresql://`` URL, parsed and printed without its password;
- :mod:`.errors`: the store's errors; :mod:`.migrate`: a verified copy between engines, and backups.

It sits below ``annotate`` (the tools that edit what it keeps) and ``datasets`` (which read it for training and
export), and imports neither. Importing this package imports none of its modules.
"""
