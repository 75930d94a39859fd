"""Trainer configs: YAML files with ``_base_`` inheritance and ``--cfg-options`` overrides.

Shared by razorctl (which reads ``dist_params.port``) and the trainer. Needs only PyYAML.

``--cfg-options`` keeps the seed's (MMCV's) meaning: ``a.b=1`` sets a nested key,
``c=[1,2]`` a list, ``c=1,2`` a list too, ``d=(1,2)`` a tuple (kept as a list), ``e=True``,
``f=None``. A key that the config does not have is an error that names it and says what
the config has there instead, so a typo never trains silently with the default.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A config file or a --cfg-options entry that cannot be used."""


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML config; ``_base_`` (a path or list of paths) is merged underneath."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"config {str(path)!r}: _base_ cycle through {resolved}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config {str(path)!r} must be a mapping at the top level")
    bases = doc.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, load_config(path.parent / base, _seen + (resolved,)))
    return deep_merge(merged, doc)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not value.get("_delete_"):
            out[key] = deep_merge(out[key], value)
        else:
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "_delete_"}
            out[key] = copy.deepcopy(value)
    return out


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_value(text: str) -> Any:
    """Parse one --cfg-options value the way the seed's tools do."""
    text = text.strip()
    if text in ("None", "none", "null", "~"):
        return None
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            return str(yaml.safe_load(text))  # a quoted string stays one string
        except yaml.YAMLError:
            return text[1:-1]
    if text.startswith("(") and text.endswith(")"):
        inner = text[1:-1].strip()
        return [parse_value(p) for p in _split_top_level(inner)] if inner else []
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_value(p) for p in _split_top_level(inner)] if inner else []
    if not text.startswith("{") and len(_split_top_level(text)) > 1:
        return [parse_value(p) for p in _split_top_level(text)]
    for number in (int, float):  # before YAML, which reads 1e-3 as a string
        try:
            return number(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (dict, list, int, float, str)) or value is None:
        return value
    return text


def format_value(value: Any) -> str:
    """The inverse of :func:`parse_value` for values from a RazorJob's cfgOptions."""
    if isinstance(value, str):
        if parse_value(value) == value and value.strip() == value and value:
            return value
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def parse_cfg_options(items: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a.b": 1, "c": [1, 2]}``."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--cfg-options {item!r}: expected key=value, e.g. optimizer.lr=0.01")
        options[key] = parse_value(value)
    return options


def apply_options(cfg: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of cfg with each dotted key set; unknown keys are an error."""
    out = copy.deepcopy(cfg)
    for dotted, value in options.items():
        parts = dotted.split(".")
        node: Any = out
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the top level"
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"--cfg-options {dotted}: {where} is a list of {len(node)}; "
                        f"{part!r} is not an index in it"
                    )
                key: Any = int(part)
            elif isinstance(node, dict):
                if part not in node:
                    known = sorted(str(k) for k in node)
                    hint = difflib.get_close_matches(part, known, n=1)
                    did = f" Did you mean {'.'.join(parts[:depth] + [hint[0]])!r}?" if hint else ""
                    raise ConfigError(
                        f"--cfg-options {dotted}: the config has no key {part!r} at {where} "
                        f"(it has: {', '.join(known) or 'nothing'}).{did}"
                    )
                key = part
            else:
                raise ConfigError(
                    f"--cfg-options {dotted}: {where} is a {type(node).__name__}, not a section"
                )
            if depth == len(parts) - 1:
                node[key] = copy.deepcopy(value)
            else:
                node = node[key]
    return out


def config_port(cfg: dict[str, Any]) -> int | None:
    """The port a config fixes through ``dist_params.port`` (the seed's Option 1), if any."""
    params = cfg.get("dist_params")
    if isinstance(params, dict) and params.get("port") is not None:
        port = params["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
            raise ConfigError(f"dist_params.port must be a port number (got {port!r})")
        return port
    return None
