"""Validation errors told in the terms of the document that was validated: locations as paths into
it, and "did you mean" for unknown keys and unknown or missing union tags (model.arch, data.dataset)."""

from __future__ import annotations

import difflib
import json
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Tag

# Patterns whose mismatch is told in words instead of the regular expression (see worded).
PATTERN_WORDS: dict[str, str] = {}


def worded(pattern: str, words: str) -> str:
    """`pattern`, registered so that a value that does not match it is told it "should be <words>"."""
    PATTERN_WORDS[pattern] = words
    return pattern


JOB_ID_PATTERN = worded(r"^[0-9a-fA-F-]{6,36}$", "a job's id or a unique prefix of it (6 to 36 characters)")


def input_loc(document, loc: tuple, *, missing: bool = False) -> tuple:
    """A validation error's location as a path into the submitted document: pydantic adds the tags
    of tagged unions (("model", "mlp", "activation") for a spec's model.activation), which are
    not keys of the document, so parts the document does not have are left out; for a `missing`
    field the last part is kept, since that is what is absent."""
    node, kept = document, []
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (missing and index == len(loc) - 1):
            continue  # a union's tag
        kept.append(part)
    return tuple(kept)


def error_loc(document, error: dict) -> tuple:
    """Where a validation error (its `loc` relative to `document`) is in the document: input_loc's
    path, and for a dataset no union member takes, the dataset field itself (pydantic says the
    union's place, `data`), where a missing upload is reported too."""
    where = input_loc(document, tuple(error["loc"]), missing=error.get("type") == "missing")
    return (*where, "dataset") if error.get("type") == "dataset" else where


def _options(annotation) -> list[tuple[str | None, Any]]:
    """(tag, type) of each type an annotation may hold: Annotated unwrapped (its Tag kept), unions
    and Optional flattened."""
    if get_origin(annotation) is Annotated:
        inner, *meta = get_args(annotation)
        tag = next((m.tag for m in meta if isinstance(m, Tag)), None)
        return [(tag or t, kind) for t, kind in _options(inner)]
    if get_origin(annotation) in (Union, types.UnionType):
        return [option for arg in get_args(annotation) for option in _options(arg)]
    return [(None, annotation)]


def _models(annotation) -> list[type[BaseModel]]:
    return [kind for _, kind in _options(annotation) if isinstance(kind, type) and issubclass(kind, BaseModel)]


def _literal(model: type[BaseModel], field: str) -> tuple:
    info = getattr(model, "model_fields", {}).get(field)
    return get_args(info.annotation) if info is not None and get_origin(info.annotation) is Literal else ()


def _names_member(part, tag: str | None, kind) -> bool:
    """Whether a part of pydantic's error location is the tag it gives this member of a union."""
    if part == tag:
        return True
    if not (isinstance(part, str) and isinstance(kind, type) and issubclass(kind, BaseModel)):
        return False
    return (
        part in (kind.__name__, f"{kind.__name__}]")
        or part.endswith(f", {kind.__name__}]")
        or any(part in _literal(kind, field) for field in kind.model_fields)
    )


def _below(annotation, part):
    """The annotation at one part of pydantic's error location (a field, a list index or a union's
    tag) below `annotation`; None where it cannot tell."""
    if isinstance(part, int):
        return next(
            (
                get_args(kind)[0]
                for _, kind in _options(annotation)
                if get_origin(kind) in (list, tuple) and get_args(kind)
            ),
            None,
        )
    for model in _models(annotation):
        if part in model.model_fields:
            return model.model_fields[part].annotation
    return next((kind for tag, kind in _options(annotation) if _names_member(part, tag, kind)), None)


def _at(root: type[BaseModel], loc: tuple):
    node = root
    for part in loc:
        node = _below(node, part)
        if node is None:
            return None
    return node


def _close(word: str, names: list[str]) -> list[str]:
    """The names `word` may have meant: one it abbreviates by initials (learning_rate: lr), else
    difflib's close matches; a dotted name is compared by its last part."""
    last = {name: name.rsplit(".", 1)[-1] for name in names}
    initials = "".join(part[:1] for part in word.lower().split("_")) if "_" in word else None
    by_initials = [name for name, part in last.items() if part == initials]
    close = difflib.get_close_matches(word.lower(), list(dict.fromkeys(last.values())), n=3, cutoff=0.6)
    return by_initials or [name for match in close for name, part in last.items() if part == match][:3]


def _unknown_field(root: type[BaseModel], loc: tuple, default: str) -> str:
    key, node = loc[-1], _at(root, loc[:-1])
    names = list(dict.fromkeys(field for model in _models(node) for field in model.model_fields))
    if not isinstance(key, str) or not names:
        return default
    nested = [
        f"{field}.{inner}"
        for model in _models(node)
        for field, info in model.model_fields.items()
        for inner in dict.fromkeys(f for m in _models(info.annotation) for f in m.model_fields)
    ]
    close = _close(key, names) or _close(key, nested)
    if close:
        return f"unknown field {key!r}: did you mean {' or '.join(map(repr, close))}?"
    return f"unknown field {key!r}; the fields here are {', '.join(names)}"


def _tags(annotation, discriminator: str) -> list[str]:
    return list(
        dict.fromkeys(
            name for tag, kind in _options(annotation) for name in ([tag] if tag else _literal(kind, discriminator))
        )
    )


def _unknown_tag(root: type[BaseModel], error: dict, document) -> str:
    """A union's tag that is missing or unknown (model.arch, data.dataset, a layer's type), with the
    known ones and, for a close miss, which was meant."""
    ctx, given, loc = error.get("ctx") or {}, error.get("input"), tuple(error["loc"])
    discriminator = str(ctx.get("discriminator", "dataset" if error["type"] == "dataset" else "")).strip("'\"")
    tags = _tags(_at(root, loc), discriminator)
    if not tags or not discriminator:
        return error["msg"]
    path = ".".join(map(str, (*input_loc(document, loc), discriminator)))
    value = given.get(discriminator) if isinstance(given, dict) else None
    close = _close(value, tags) if isinstance(value, str) else []
    if error["type"] == "dataset":  # its own message lists the datasets
        prefix, colon, rest = value.partition(":") if isinstance(value, str) else ("", "", "")
        if colon and prefix.lower() == "uploaded":  # Uploaded:shapes
            return f"{error['msg']}; did you mean uploaded:{rest}?"
        if close:
            return f"{error['msg']}; did you mean {' or '.join(close)}?"
        if isinstance(value, str) and value and ":" not in value:
            return f"{error['msg']}; an uploaded dataset is named with its prefix: uploaded:{value}"
        return error["msg"]
    if value is None:
        misplaced = [key for key, v in (given if isinstance(given, dict) else {}).items() if v in tags]
        instead = f" (not {misplaced[0]!r})" if misplaced else ""
        return f"{path} is required{instead}: one of {', '.join(tags)}"
    meant = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown {path} {value!r}: {meant}{path} is one of {', '.join(tags)}"


def explain(error: dict, root: type[BaseModel], document) -> str:
    """A pydantic error's message, told in the terms of the document `root` validated: unknown keys
    and unknown or missing union tags (model.arch, data.dataset) get "did you mean" from the names
    known there. `error["loc"]` is pydantic's location in the document."""
    try:
        if error.get("type") == "extra_forbidden" and error.get("loc"):
            return _unknown_field(root, tuple(error["loc"]), error["msg"])
        if error.get("type") in ("union_tag_not_found", "union_tag_invalid", "dataset"):
            return _unknown_tag(root, error, document)
    except Exception:  # a hint must never cost the answer
        return error["msg"]
    return plain_message(error)


def plain_message(error: dict) -> str:
    """pydantic's message without its "Value error, " prefix (the message is ours), and with the
    value given where a value of the wrong type was (a short one)."""
    message, given = error["msg"], error.get("input")
    if error.get("type") == "value_error":
        return message.removeprefix("Value error, ")
    if error.get("type") == "string_pattern_mismatch":
        return worded_mismatch(error)
    if error.get("type") == "literal_error" and isinstance(given, str):
        allowed = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        close = _close(given, allowed) if given not in allowed else []
        if close:
            return f"{message}; did you mean {' or '.join(close)}?"
        return message + (f"; got {given!r}" if len(repr(given)) <= 40 else "")
    wrong_type = str(error.get("type", "")).endswith(("_parsing", "_type"))
    if wrong_type and isinstance(given, str | int | float | bool) and len(repr(given)) <= 40:
        return f"{message}; got {json.dumps(given) if isinstance(given, bool) else repr(given)}"  # JSON's true
    return message


def worded_mismatch(error: dict) -> str:
    """A string_pattern_mismatch error's message, in words where its pattern was worded."""
    words = PATTERN_WORDS.get(str((error.get("ctx") or {}).get("pattern")))
    if words is None:
        return error["msg"]
    given = error.get("input")
    return f"should be {words}" + (f"; got {given!r}" if isinstance(given, str) and len(given) <= 70 else "")
