"""Typed configuration files: YAML → small dataclasses, every field checked, errors name the field.

Used by every command that reads a config (``protlm pretrain``, ``protlm train``): the YAML is
read, ``key=value`` overrides (``train.phases.0.steps=200``) are applied to the tree *before*
validation, so an override is checked exactly like the file; any error is one line such as
``protlm: error: config train.lr: must be a number, not 'fast'``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from protlm.errors import ConfigError

__all__ = ["build", "load_tree", "parse_number", "parse_overrides", "set_dotted"]


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config {where}: must be a list, not {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config {where}: must be a list of {len(args)} numbers, not {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config {where}: must be a mapping, not {value!r}")
        if len(args) == 2:
            return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {where}: must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {where}: must be an integer, not {value!r}")
        return value
    if hint is float:
        return parse_number(value, where)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {where}: must be a string, not {value!r}")
        return value
    return value


def parse_number(value: Any, where: str) -> float:
    """A float from what a user writes: ``0.001``, ``1e-3``, ``1E-3``, ``1e3`` (YAML 1.1, and so
    PyYAML, reads ``1e-3`` without a dot as a string), never inf or NaN."""
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"config {where}: must be a number, not {value!r}") from None
        if text.lower().lstrip("+-").lstrip(".") in ("inf", "infinity", "nan"):
            raise ConfigError(f"config {where}: must be a finite number, not {value!r}")
        value = number
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config {where}: must be a number, not {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"config {where}: must be a finite number, not {value!r}")
    return value


def build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {where}: must be a mapping of fields, not {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"config {prefix}{unknown[0]}: unknown field; expected one of {sorted(names)}"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {dotted}: {part!r} is not an index of {'.'.join(parts[:i])}")
            node = node[int(part)]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        if part == "phases" and isinstance(node[part], list) is False:
            raise ConfigError(f"override {dotted}: phases is not a list")
        if not isinstance(node[part], (dict, list)):
            raise ConfigError(f"override {dotted}: {'.'.join(parts[:i + 1])} is {node[part]!r}, a value with no "
                              f"fields to set")
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {dotted}: {last!r} is not an index")
        node[int(last)] = value
    else:
        node[last] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    import yaml

    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.phases.0.steps=200")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


class _DuplicateKey(Exception):
    pass


def _unique_key_loader():
    """yaml's safe loader, except that a key given twice in one mapping is an error: YAML keeps
    the last one, so a second ``train:`` section would silently replace the whole first one."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys after it override, by design
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    twice = key in seen
                except TypeError:  # an unhashable key: yaml's own error says so
                    continue
                if twice:
                    raise _DuplicateKey(f"key {key!r} is given twice (lines {seen[key]} and "
                                        f"{key_node.start_mark.line + 1}); YAML would keep only the last one")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return Loader


def load_tree(path: str | Path | None = None, overrides: list[str] | None = None,
              data: dict | None = None) -> dict:
    """The YAML file (or a dict) as a plain tree, with ``key=value`` overrides applied."""
    import yaml

    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            line = p.read_bytes()[: exc.start].count(b"\n") + 1
            raise ConfigError(f"config {p}: not UTF-8 text (byte {exc.start}, line {line}); "
                              "save the file as UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"config {p}: cannot read ({exc.strerror})") from None
        try:
            tree = yaml.load(text, Loader=_unique_key_loader())
        except _DuplicateKey as exc:
            raise ConfigError(f"config {p}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(f"config {p}: not valid YAML{where}") from None
        if tree is None:
            raise ConfigError(f"config {p}: the file holds no settings (empty or only comments); "
                              "write `{}` in it to use every default")
        if not isinstance(tree, dict):
            raise ConfigError(f"config {p}: the top level must be a mapping of sections")
    if data is not None:
        tree = json.loads(json.dumps(data))
    for key, value in parse_overrides(overrides or []):
        set_dotted(tree, key, value)
    return tree
