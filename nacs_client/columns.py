"""Column names as the command lines take them: repeated, comma-separated, or both."""

from __future__ import annotations


def column_names(values: tuple[str, ...], *, in_order: bool = False) -> list[str] | None:
    """The names in ``values`` (None: none given). Names ``in_order`` (a file's columns) keep
    an empty one, but a trailing comma's, for the request to refuse: dropping it would shift
    the names after it."""
    names = []
    for value in values:
        items = [name.strip() for name in value.split(",")]
        if len(items) > 1 and not items[-1]:
            items.pop()
        names += items if in_order else [name for name in items if name]
    return names or None
