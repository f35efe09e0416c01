"""Lineage at a glance: each version's parent, what changed from it, its size and what it shares.

A version's parent is the latest version when it was built (the catalog's `parent`). What
changed is `versions.diff_versions(parent, version)` summed up: videos added, removed, moved,
changed in content and relabelled, and the settings and tools that differ. Shared bytes are
the bytes of the tars both reference (stored once in OUTPUT/shards/).
"""

from __future__ import annotations

from pipeline import storage
from pipeline.build import manifest, tags
from pipeline.build import versions as version
from pipeline.storage import Location

TOOLS_PREFIX = "tools."


def _shards(root: Location, vid: str) -> dict[str, int]:
    path = storage.join(root, version.VERSIONS_DIR, vid, manifest.SHARDS)
    return {r["name"]: r["bytes"] for r in manifest.read_rows(path)}


def changes(root: Location, parent: str, vid: str) -> dict:
    """What changed from `parent` to `vid`: counts of videos added, removed, moved, changed and
    relabelled, and the names of the settings and tools that differ."""
    d = version.diff_versions(root, parent, vid)
    settings = [s["setting"] for s in d["settings"]]
    return {
        "added": len(d["added"]),
        "removed": len(d["removed"]),
        "moved": len(d["moved"]),
        "changed": len(d["changed"]),
        "relabelled": len(d["relabelled"]),
        "classes_added": d["classes"]["added"],
        "classes_removed": d["classes"]["removed"],
        "settings": [s for s in settings if not s.startswith(TOOLS_PREFIX)],
        "tools": [s[len(TOOLS_PREFIX) :] for s in settings if s.startswith(TOOLS_PREFIX)],
    }


def lineage(output: Location) -> list[dict]:
    """One entry per version, in catalog order: the catalog row (`versions.list_versions`) with
    `parent_state` ("" for none, "committed" or "pruned"), `shared_bytes` (with its parent) and
    `changes` (None when there is no parent to compare with)."""
    root = storage.location(output)
    rows = version.list_versions(root)
    committed = set(version.committed_versions(root))
    pruned = tags.read_pruned(root)
    out = []
    for r in rows:
        parent = r["parent"]
        entry = {**r, "parent_state": "", "shared_bytes": 0, "changes": None}
        if parent and parent in committed:
            mine, theirs = _shards(root, r["version"]), _shards(root, parent)
            entry.update(
                parent_state="committed",
                changes=changes(root, parent, r["version"]),
                shared_bytes=sum(b for n, b in mine.items() if n in theirs),
            )
        elif parent:
            entry["parent_state"] = "pruned" if parent in pruned else "missing"
        out.append(entry)
    return out


def describe(entry: dict) -> str:
    """A one-line summary of a lineage entry's changes ("+2 added, 1 relabelled; settings: flow.algorithm")."""
    c = entry["changes"]
    if c is None:
        return {
            "": "first version",
            "pruned": f"parent {entry['parent']} was pruned",
            "missing": f"parent {entry['parent']} is gone",
        }[entry["parent_state"]]
    words = [f"{c[k]} {k}" for k in ("added", "removed", "moved", "changed", "relabelled") if c[k]]
    if c["classes_added"] or c["classes_removed"]:
        words.append(f"classes +{len(c['classes_added'])}/-{len(c['classes_removed'])}")
    line = ", ".join(words) or "same videos"
    if c["settings"]:  # "flow.params.*" read as "flow.params": the line names what changed, diff says how
        groups = dict.fromkeys(".".join(s.split(".")[:2]) for s in c["settings"])
        line += f"; settings: {', '.join(groups)}"
    if c["tools"]:
        line += f"; tools: {', '.join(c['tools'])}"
    return line
