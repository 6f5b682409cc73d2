"""Reading a YAML configuration file: the one loader under pploy's and gate's configurations.

Every way a file can be unusable — unreadable, not UTF-8, not YAML, not a mapping, a value of the
wrong kind, a placeholder left in — ends as one :class:`ConfigError` whose lines name the file and
the dotted key (``gate.yml: auth.info.client_id: …``), so an operator can fix it from the message
alone and callers catch one type. The models themselves live with the servers they configure
(``pploy.deploy.config``, ``pploy.gate.config``); this module knows nothing about their keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

# The marker the shipped example configurations put where a value must be the operator's own
# (a session key, OAuth credentials, the public URL). A value still holding it is refused.
PLACEHOLDER = "CHANGE-ME"

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(Exception):
    """A configuration that cannot be used; each line of the message names the key (and the
    file, when there is one) and the problem."""


def read_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The top-level mapping of the YAML file at ``path`` (an empty file is an empty mapping).

    Only plain YAML is read (``safe_load``): a tag that builds Python objects is an error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    try:
        loaded = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # PyYAML's constructors raise a bare ValueError for bad scalars (`2001-13-45`).
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return loaded


def dotted_key(loc: Sequence[int | str]) -> str:
    """pydantic's error location ``("proxy", 0, "dest")`` → ``proxy[0].dest``: the key as the
    operator sees it in the file. Validator names (``function-after[…]``) are not keys."""
    return _join([p for p in loc if isinstance(p, int) or not p.startswith("function-")])


def _join(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


def _line(source: str | None, key: str, message: str) -> str:
    return f"{source}: {key}: {message}" if source else f"{key}: {message}"


def format_validation_error(
    exc: ValidationError, source: str | None = None, docs: str | None = None
) -> str:
    """One line per problem, ``source: key.sub: message``; ``docs`` names the page that lists
    the keys, for the unknown-key message."""
    lines = []
    for error in exc.errors():
        key = dotted_key(error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key" + (f" (see {docs} for the keys understood)" if docs else "")
        elif error["type"] == "missing":
            message = "required key is missing"
        head, sep, rest = message.partition(": ")
        if sep and head.startswith(key + ".") and " " not in head:
            # A model-level check already named the exact key below this one.
            key, message = head, rest
        lines.append(_line(source, key, message))
    return "\n".join(lines)


def validate(
    model: type[Model], data: Any, source: str | None = None, docs: str | None = None
) -> Model:
    """``data`` as ``model``, or a :class:`ConfigError` naming every wrong key at once."""
    if not isinstance(data, dict):
        raise ConfigError(_line(source, "(top level)", "the configuration must be a mapping"))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, docs)) from None


def _strings(value: Any) -> Iterator[tuple[str, str]]:
    """Every string value under ``value`` with its dotted key, in document order. Walked with a
    stack, not recursion, whatever the nesting; each mapping or list once, so a YAML anchor
    used twice, or one that makes a value contain itself (``users: &x [*x]``), ends too."""
    seen: set[int] = set()
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str):
            yield _join(loc), item
        elif isinstance(item, dict | list) and id(item) not in seen:
            seen.add(id(item))
            children: list[tuple[int | str, Any]] = (
                [(str(key), child) for key, child in item.items()]
                if isinstance(item, dict)
                else list(enumerate(item))
            )
            stack.extend(((*loc, key), child) for key, child in reversed(children))


def refuse_placeholders(data: Any, source: str | None = None) -> None:
    """Refuse a configuration that still holds a ``CHANGE-ME`` from a shipped example: a
    placeholder session key or client secret would run, publicly known, in production."""
    found = [key or "(top level)" for key, value in _strings(data) if PLACEHOLDER in value]
    if found:
        raise ConfigError(
            "\n".join(
                _line(source, key, f"still holds the placeholder {PLACEHOLDER}; put your own value")
                for key in found
            )
        )
