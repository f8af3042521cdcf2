"""Whether a model name is a local path or may be a Hub id, and a fast error for a missing one.

A name such as ``runs/shape`` could be a local folder or a Hub id (``ORG/NAME``). Trying a
mistyped local folder on the Hub costs the network's timeouts (half a minute offline) and
ends in a message about the network, not about the typo. The rule used by every loader that
accepts "a folder or Hub id" (``mmcontrast eval --model``, ``model.init_from``): a name that
does not exist locally is treated as a local path, and refused at once, when

* it starts with ``/``, ``./``, ``../`` or ``~``, or contains a backslash;
* it has more than one ``/`` (a Hub id has exactly one: ``ORG/NAME``); or
* its first component is an existing local folder (``runs/`` exists, ``runs/shape`` does
  not), so a local folder of the same name as a Hub organisation shadows it.

Other names (``ORG/NAME`` whose ``ORG`` is no local folder, a bare ``NAME``) may be Hub ids.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["absolute_source", "check_local_name", "local_path_reason"]

_PATH_STARTS = ("/", "./", "../", "~")


def local_path_reason(name: str) -> str | None:
    """Why ``name`` can only be a local path (a phrase), or None when it may be a Hub id."""
    if name.startswith(_PATH_STARTS):
        return f"it starts with {next(s for s in _PATH_STARTS if name.startswith(s))!r}"
    if "\\" in name:
        return "it contains a backslash"
    if name.count("/") > 1:
        return "it has more than one '/'"
    first, sep, _ = name.partition("/")
    if sep and Path(first).is_dir():
        return f"{first}/ is a local folder"
    return None


def check_local_name(name: str) -> None:
    """Refuse, without touching the network, a local-only name that names nothing here.

    See the module docstring for which names are local-only.

    Raises:
        ValueError: ``name`` does not exist and can only be a local path; the message says
            why it is not taken for a Hub id.
    """
    if Path(name).exists():
        return
    reason = local_path_reason(name)
    if reason is None:
        return
    hint = ""
    if name.startswith("~") and Path(name).expanduser().exists():
        hint = "; '~' is not expanded inside quotes: give the full path"
    raise ValueError(
        f"{name}: no such folder; {reason}, so it is a local path, not a Hub id{hint} "
        "(a Hub id has the form ORG/NAME; pass an existing folder)"
    )


_PATH_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth")


def absolute_source(name: str) -> str:
    """``name`` with the local paths in it made absolute, so a run that records it (its
    ``model.init_from``) still finds them from another working directory. Hub ids, tags and
    names of nothing local are kept as written; in ``open_clip:A[:B]`` each part that is an
    existing path (``local-dir:DIR``, a config or weights file) is resolved.
    """
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    prefix, sep, rest = name.partition(":")
    if prefix != "open_clip" or not sep:
        return name
    parts = rest.split(":")
    for i, part in enumerate(parts):
        candidate = Path(part).expanduser()
        hub_repo = i > 0 and parts[i - 1] == "hf-hub"  # ORG/NAME, never a local path
        if not hub_repo and ("/" in part or part.endswith(_PATH_SUFFIXES)) and candidate.exists():
            parts[i] = str(candidate.resolve())
    return f"{prefix}:{':'.join(parts)}"
