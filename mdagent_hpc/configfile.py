"""Read a YAML file into a pydantic model and report every problem as `file:line: key.path: message`.

Generic and pure (yaml and pydantic only): site configs and request files both load through `load_config`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import AliasChoices, BaseModel, ValidationError

from mdagent_hpc.errors import MDAgentError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]


class ConfigFileError(MDAgentError):
    """One or more problems in a config file, one `file:line: key: message` per line, in line order."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def load_config(path: str | Path, model: type[M], what: str) -> M:
    """Read the YAML file `path` into `model`; `what` names such a file in messages ("a site config").

    `ConfigFileError` lists every problem: a missing, unreadable or binary file, a YAML syntax error, an empty file
    or one that is not a mapping, duplicate keys, unknown keys (with a did-you-mean and the allowed keys, also inside
    nested models that allow extras), a key given under two of its names, missing keys and wrong values.
    """
    path = Path(path)
    root, data = _read(path, model, what)
    lines: dict[Loc, int] = {}
    problems = list(_index(root, (), lines))
    checked: set[Loc] = set()
    for loc, message in _key_problems(data, model, ()):
        checked.add(loc)
        problems.append((_line(loc, lines), message))
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            if not (error["type"] == "extra_forbidden" and _loc(error) in checked):  # said by the walk above
                problems.append((_line(_loc(error), lines), explain(error, model)))
    if problems:
        raise ConfigFileError([f"{path}:{line}: {message}" for line, message in sorted(problems, key=lambda p: p[0])])
    return result


def explain(error: Any, model: type[BaseModel]) -> str:
    """One pydantic error of validating `model` as `key.path: message`."""
    loc = _loc(error)
    kind, value, msg = error["type"], error.get("input"), error["msg"]
    if kind == "extra_forbidden":
        return _unknown_key(loc, _names(_model_at(model, loc[:-1])))
    if kind == "missing":
        msg = "required key is missing"
    elif kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        msg = f"{value!r} is not one of {', '.join(allowed)}"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"expected a mapping of keys, got {value!r}"
    elif not isinstance(value, dict | list):
        msg = f"{msg[0].lower()}{msg[1:]}, got {value!r}"
    return f"{_dotted(loc) or '(top)'}: {msg}"


def _read(path: Path, model: type[BaseModel], what: str) -> tuple[yaml.Node, dict]:
    """The root node and the mapping it holds; anything else is a `ConfigFileError`."""
    if path.is_dir():
        raise ConfigFileError([f"{path} is a folder, not {what}"])
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigFileError([f"{path}: no such file"]) from None
    except UnicodeDecodeError:
        raise ConfigFileError([f"{path}: not a text file; {what} is YAML"]) from None
    except OSError as exc:
        raise ConfigFileError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters here
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigFileError([f"{path}:{line}: YAML syntax error: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError:  # a reader error: control characters, which no YAML text holds
        raise ConfigFileError([f"{path}: not a text file (it holds control characters); {what} is YAML"]) from None
    if data is None:
        required = [name for name, field in model.model_fields.items() if field.is_required()]
        needs = f"; {what} needs at least {' and '.join(required)}" if required else ""
        raise ConfigFileError([f"{path}:1: the file is empty{needs}"])
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"
        raise ConfigFileError([f"{path}:{root.start_mark.line + 1}: expected a mapping of keys at the top, got {kind}"])
    return root, data


def _index(node: yaml.Node, at: Loc, lines: dict[Loc, int]) -> Iterator[tuple[int, str]]:
    """Fill `lines` with the line of each key path (or list item); yield the duplicate keys."""
    lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            loc, line = (*at, key_node.value), key_node.start_mark.line + 1
            if loc in lines:
                yield line, f"{_dotted(loc)}: duplicate key (first at line {lines[loc]})"
                continue
            lines[loc] = line
            yield from _index(value_node, loc, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _index(item, (*at, i), lines)


def _key_problems(data: dict, model: type[BaseModel], at: Loc) -> Iterator[tuple[Loc, str]]:
    """Keys that `model` (or the model of a section) does not have, and fields given under two of their names.

    Pydantic drops unknown keys silently in models that allow extras, and words an alias given twice as an
    unknown key: hence this walk.
    """
    names = _names(model)
    given: set[str] = set()
    for key, value in data.items():
        loc = (*at, key)
        field = names.get(key) if isinstance(key, str) else None
        if field is None:
            yield loc, _unknown_key(loc, list(names))
            continue
        if field in given:
            yield loc, f"{_dotted(loc)}: given twice, as {key} and under another name; keep one"
        given.add(field)
        nested = _nested_model(model.model_fields[field].annotation)
        if isinstance(value, dict) and nested is not None:
            yield from _key_problems(value, nested, loc)


def _unknown_key(loc: Loc, allowed: list[str]) -> str:
    key = str(loc[-1])
    close = difflib.get_close_matches(key, allowed, n=1) or [a for a in allowed if a.startswith(key)][:1]
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{_dotted(loc)}: unknown key{hint}; allowed: {', '.join(allowed)}"


def _names(model: type[BaseModel] | None) -> dict[str, str]:
    """Each key `model` accepts (its field names, or their aliases) -> the field's name."""
    names: dict[str, str] = {}
    for name, field in (model.model_fields if model else {}).items():
        alias = field.validation_alias or field.alias
        for choice in alias.choices if isinstance(alias, AliasChoices) else [alias or name]:
            if isinstance(choice, str):
                names[choice] = name
    return names


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (`Limits | None` -> Limits), or None."""
    for kind in (annotation, *get_args(annotation)):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


def _model_at(model: type[BaseModel] | None, loc: Loc) -> type[BaseModel] | None:
    for key in loc:
        field = _names(model).get(key) if isinstance(key, str) else None
        model = _nested_model(model.model_fields[field].annotation) if field else None
    return model


def _loc(error: Any) -> Loc:
    """The key path of a pydantic error, without the steps it adds inside unions and validators."""
    return tuple(part for part in error["loc"] if isinstance(part, int) or "[" not in part)


def _line(loc: Loc, lines: dict[Loc, int]) -> int:
    """The line of `loc`, or of the nearest section around it that the file has."""
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
