"""Building a validated :class:`ExperimentConfig` from YAML, mappings and dotted overrides."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from hssal_ray import _io
from hssal_ray.config.experiment import ExperimentConfig
from hssal_ray.config.frozen import MOVED_FROM_SSL
from hssal_ray.errors import ConfigError

log = logging.getLogger(__name__)


def _is_number(value: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


# scalar type -> (accepts the value, converts it, what the error says was expected)
_SCALARS: dict[Any, tuple[Any, Any, str]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v, "true or false"),
    int: (lambda v: _is_number(v, (int,)), lambda v: v, "an integer"),
    float: (lambda v: _is_number(v, (int, float)), float, "a number"),
    str: (lambda v: isinstance(v, str), lambda v: v, "a string"),
}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}; allowed values: {', '.join(map(str, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
    if tp in _SCALARS:
        accepts, convert, expected = _SCALARS[tp]
        if accepts(value):
            return convert(value)
        raise ConfigError(f"{key}: got {value!r}; expected {expected}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}; expected a list")
        (inner,) = get_args(tp) or (Any,)
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}; expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}; allowed keys here: {', '.join(names)}")
        kwargs[k] = _coerce(key, v, hints[k])
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the name check above
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested mapping.

    Keys under their old names (``ssl.<key>`` for a ``frozen.*`` key) are read as the new ones
    (:func:`move_old_keys`)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(values).__name__}")
    return _build(ExperimentConfig, move_old_keys(values))


def new_key_name(key: str) -> str:
    """The current name of the dotted config key ``key`` (``ssl.graph_k`` -> ``frozen.graph_k``)."""
    section, _, name = key.partition(".")
    return f"frozen.{name}" if section == "ssl" and name in MOVED_FROM_SSL else key


def _warn_moved(old: list[str]) -> None:
    if old:
        log.warning(
            "config keys moved to the frozen section: %s; the old names still load, write the new ones",
            ", ".join(f"{k} is now {new_key_name(k)}" for k in old),
        )


def move_old_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every ``ssl.<key>`` that is now ``frozen.<key>`` moved there, and one
    warning naming the new keys (``values`` itself is not changed).

    Raises:
        ConfigError: One mapping gives a key under both names with different values.
    """
    ssl = values.get("ssl")
    if not isinstance(ssl, dict) or not any(k in MOVED_FROM_SSL for k in ssl):
        return values
    frozen = values.get("frozen")
    frozen = dict(frozen) if isinstance(frozen, dict) else {} if frozen is None else frozen
    if not isinstance(frozen, dict):
        return values  # a non-mapping frozen section: _build names it
    out, ssl, moved = dict(values), dict(ssl), []
    for k in [k for k in ssl if k in MOVED_FROM_SSL]:
        v = ssl.pop(k)
        if k in frozen and frozen[k] != v:
            raise ConfigError(
                f"ssl.{k}={v!r} and frozen.{k}={frozen[k]!r} are both given: ssl.{k} is the old name of "
                f"frozen.{k}; keep frozen.{k}"
            )
        frozen[k] = v
        moved.append(f"ssl.{k}")
    out["ssl"], out["frozen"] = ssl, frozen
    _warn_moved(moved)
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict form of a config (for YAML, JSON and Ray workers)."""
    return dataclasses.asdict(cfg)


def science_fields(cfg: Any) -> dict[str, Any]:
    """The nested dict of every field of ``cfg`` not marked :data:`RUNTIME`.

    A field marked ``ADDED`` (``config._base``) counts only when it differs from its default. The
    run's identity (:func:`hssal_ray.loop.run_config.science_sha`) is this less the keys the run
    never reads (a query key its strategy does not take, a frozen-path key on the image path)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("runtime"):
            continue
        v = getattr(cfg, f.name)
        if f.metadata.get("identity") == "omit_default" and v == f.default:
            continue
        out[f.name] = science_fields(v) if dataclasses.is_dataclass(v) else v
    return out


def config_to_yaml(cfg: Any) -> str:
    """YAML text of a resolved config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def set_dotted(d: dict[str, Any], key: str, value: Any, *, leaf_only: bool = False) -> None:
    """Set ``d["a"]["b"]["c"] = value`` for ``key="a.b.c"``, creating missing sections.

    The one dotted-key setter (CLI overrides and Tune's search space both use it). ``leaf_only``
    refuses to replace a whole section (a search space must name one of its settings).

    A key under its old name (``ssl.graph_k``) sets the new one (``frozen.graph_k``).

    Raises:
        ConfigError: a prefix of ``key`` is a setting, or (``leaf_only``) ``key`` is a section.
    """
    key = new_key_name(key)
    parts = key.split(".")
    cur = d
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"'{key}': '{'.'.join(parts[: i + 1])}' is a setting, not a section")
        cur = nxt
    if leaf_only and isinstance(cur.get(parts[-1]), dict):
        raise ConfigError(f"'{key}' is a whole section; search over one of its settings, e.g. '{key}.<name>'")
    cur[parts[-1]] = value


def apply_overrides(values: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) to a nested mapping.

    Keys under their old names are moved first, in ``values`` and then in the overrides
    (:func:`move_old_keys`), so a later override wins whichever name either uses.

    Raises:
        ConfigError: A malformed override, or one that gives a key under its old and its new name
            with different values.
    """
    out = _deepcopy(move_old_keys(values))
    given: dict[str, tuple[str, Any]] = {}
    old: list[str] = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = parse_yaml(raw) if raw.strip() != "" else ""
        except (yaml.YAMLError, RecursionError) as e:
            raise ConfigError(f"override '{item}': value is not valid YAML ({_one_line(e)})") from None
        new = new_key_name(key)
        if new != key:
            old.append(key)
        first, before = given.get(new, (key, value))
        if first != key and before != value:
            raise ConfigError(
                f"overrides {first}={before!r} and {key}={value!r} set the same key ({new}) to different "
                f"values; keep {new}"
            )
        given[new] = (key, value)
        set_dotted(out, key, value)
    _warn_moved(old)
    return out


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in a YAML document names one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    Plain PyYAML keeps the last value of a repeated key without a word, so a config file that sets
    ``query.budget`` twice would silently run with the second value. Merge keys (``<<:``) still
    override as YAML defines.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    where = f"lines {first} and {line}" if first != line else f"line {line}"
                    raise DuplicateKeyError(f"key {key!r} is given twice ({where}); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely (no object construction), refusing keys given twice in one mapping.

    Raises:
        yaml.YAMLError: Invalid YAML (:class:`DuplicateKeyError` for a repeated key).
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_mapping(path: str, what: str, fix: str) -> dict[str, Any]:
    """Read the YAML mapping of a config file, every way it can be unreadable being one clear error.

    Args:
        path: The file (local path or URI).
        what: How the messages name it (``config file``, ``run config``).
        fix: What the user should do, appended to every message.

    Raises:
        ConfigError: The file is missing, not a regular file, not UTF-8 text, not valid YAML, names a
            key twice, or does not hold a mapping at the top level.
    """
    if not _io.exists(path):
        raise ConfigError(f"{what} not found: {path}")
    if _io.is_dir(path):
        raise ConfigError(f"{what} {path} is a directory, not a YAML file; {fix}")
    try:
        data = _io.read_bytes(path)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path} ({e.strerror or e}); {fix}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start}: binary data?); {fix}") from None
    try:
        loaded = parse_yaml(text)
    except DuplicateKeyError as e:
        raise ConfigError(f"{what} {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML ({_one_line(e)}); {fix}") from None
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply to be a config; {fix}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def load_config(path: str | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file of overrides (or none), apply ``key=value`` overrides and validate.

    Args:
        path: YAML file (local path or URI); ``None`` for pure defaults (the embedded demo).
        overrides: ``key.sub=value`` strings.

    Returns:
        The validated, frozen :class:`ExperimentConfig`.

    Raises:
        ConfigError: On a missing or unreadable file, bad YAML, a key given twice, an unknown key, a
            wrong type or a bad value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml_mapping(path, "config file", "pass a YAML file of config overrides (see configs/)")
    return config_from_dict(apply_overrides(values, overrides))
