"""Plug-ins by name: one registration path per kind, and one home for every default.

Decision (docs/architecture.md has the table and the reasons):

- Policies, estimators, data sources and robot drivers register by their Hydra config file alone:
  `datamil/configs/<group>/<name>.yaml` with a `_target_`. `ConfigRegistry` lists that group and imports the
  target, so the Python name registry is derived from the config group, never written by hand. The
  option name on the command line (`policy=bc_mlp`) and the registry name are the same by construction.
- Selection methods, OXE dataset layouts, gripper and rotation conventions register in Python
  (`Registry.register`), because their configs are values (a `SelectionConfig` preset, a row of
  datamil/data/oxe_datasets.yaml), not targets.
- Defaults: the group's YAML file is the only source. Python targets that take its settings read their
  defaults from it (`configured`), so a library call and the command line agree by construction.

Further config directories (a plug-in outside this repository) are added with `add_config_dir`; the
entry points take the same directory through Hydra's `hydra.searchpath`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from omegaconf import DictConfig, OmegaConf

from datamil.errors import DatamilError, UnknownNameError

T = TypeVar("T")
_EXTRA_DIRS: list[Path] = []
_META_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_", "defaults")


class Registry(Generic[T]):
    """Maps short names to classes or functions; unknown names fail with the list of valid ones.

    For the kinds registered in Python (selection methods, OXE layouts); config-registered kinds use
    `ConfigRegistry`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, list(self._entries))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


# ------------------------------------------------------------------------------------ config groups
def config_dirs() -> list[Path]:
    """The packaged config directory first, then every directory added with `add_config_dir`."""
    from datamil.cli import CONFIG_DIR

    return [Path(CONFIG_DIR), *_EXTRA_DIRS]


def add_config_dir(path: str | Path) -> None:
    """Register every `<group>/<name>.yaml` under `path` (a plug-in kept outside this repository)."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise DatamilError(
            f"config directory {path} does not exist; pass a directory holding <group>/<name>.yaml"
        )
    if path not in _EXTRA_DIRS:
        _EXTRA_DIRS.append(path)


def remove_config_dir(path: str | Path) -> None:
    """Undo `add_config_dir` (tests, and plug-ins loaded for one run)."""
    resolved = Path(path).resolve()
    if resolved in _EXTRA_DIRS:
        _EXTRA_DIRS.remove(resolved)


def use_hydra_searchpath() -> None:
    """Add the config directories of the running Hydra app's `hydra.searchpath` (file:// entries), so that
    a plug-in registered there is known to the Python registries too (e.g. a checkpoint's policy name)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    for entry in HydraConfig.get().searchpath:
        if str(entry).startswith("file://") and Path(str(entry)[len("file://") :]).is_dir():
            add_config_dir(str(entry)[len("file://") :])


def group_files(group: str) -> dict[str, Path]:
    """name -> file of every option of a config group; the same name in two directories fails."""
    found: dict[str, Path] = {}
    for root in config_dirs():
        for path in sorted((root / group).glob("*.yaml")):
            if path.stem in found:
                raise DatamilError(f"{group}={path.stem} is defined twice: {found[path.stem]} and {path}")
            found[path.stem] = path
    return found


def load_option(group: str, name: str) -> DictConfig:
    """The option's config composed as Hydra composes it: its `defaults` list merged in order, `_self_`
    where it stands (last when absent), an option of the same group by name (`- bc_image`) at the root,
    an option of a nested group (`- proxy: default`, estimator/proxy/default.yaml) under that key.

    Interpolations stay unresolved: they refer to the composed app config (e.g. `${data.cameras}`)."""
    files = group_files(group)
    if name not in files:
        raise UnknownNameError(group, name, list(files))
    own = OmegaConf.load(files[name])
    entries = list(own.get("defaults", []))
    if "_self_" not in entries:
        entries.append("_self_")
    merged = OmegaConf.create({})
    for entry in entries:
        if entry == "_self_":
            part = OmegaConf.masked_copy(own, [k for k in own if k != "defaults"])
        elif isinstance(entry, str):
            part = load_option(group, entry)
        else:
            ((sub, option),) = entry.items()
            part = OmegaConf.create({sub: load_option(f"{group}/{sub}", option)})
        merged = OmegaConf.merge(merged, part)
    return merged  # type: ignore[return-value]


def configured(group: str, name: str, key: str | None = None) -> Mapping[str, Any]:
    """The default settings of `group=name` as Python values: the YAML is their only source.

    Nested nodes with a `_target_` (ProxyConfig, OptimConfig, ...) are built; lists become tuples, so a
    value can stand as a signature or dataclass default; interpolated values, which only the composed app
    config can resolve, and mandatory ones (`???`) are left out. `key` selects a sub-node (`robot` for the
    robot group, whose files are packaged globally)."""
    from hydra.utils import instantiate

    node = load_option(group, name)
    if key is not None:
        node = node[key]
    values: dict[str, Any] = {}
    for field in node:
        if (
            field in _META_KEYS
            or OmegaConf.is_interpolation(node, field)
            or OmegaConf.is_missing(node, field)
        ):
            continue
        value = node[field]
        if isinstance(value, DictConfig) and "_target_" in value:
            values[field] = instantiate(value)
        elif OmegaConf.is_config(value):
            values[field] = _tuples(_plain(value))
        else:
            values[field] = value
    return values


def _tuples(value: Any) -> Any:
    """Lists (at any depth) as tuples: an immutable default, the type the constructors keep."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


@functools.lru_cache(maxsize=512)
def _own_target(path: str, mtime_ns: int, key: str | None) -> str | None:
    """The `_target_` a config file sets itself (None for a preset of another option); cached per version."""
    node = OmegaConf.load(path)
    node = node.get(key) if key is not None else node
    return str(node["_target_"]) if isinstance(node, DictConfig) and "_target_" in node else None


def _plain(node: Any) -> Any:
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # an interpolation into the app config: keep it as written
        return OmegaConf.to_container(node, resolve=False)


class ConfigRegistry:
    """A name registry derived from a config group: names = its option files, entries = their targets.

    resolve: maps the imported `_target_` to the registry entry (the estimator group targets
    `estimate_<name>`, whose `.run` is the registered run function). key: the node holding `_target_`
    when the files are packaged globally (robot drivers: `robot`)."""

    def __init__(
        self, kind: str, group: str, resolve: Callable[[Any], Any] | None = None, key: str | None = None
    ) -> None:
        self.kind, self.group, self.key = kind, group, key
        self._resolve = resolve or (lambda obj: obj)

    def names(self) -> list[str]:
        """The plug-ins: options that declare their own `_target_`. An option that only changes another's
        values through its `defaults` list (policy=bc_image_only, data=metaworld_full) is a preset of
        that plug-in: `get` and `config` accept it, `names` does not list it twice."""
        return sorted(name for name, path in group_files(self.group).items() if self._declares_target(path))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def _declares_target(self, path: Path) -> bool:
        return _own_target(str(path), path.stat().st_mtime_ns, self.key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def config(self, name: str) -> DictConfig:
        """The option's (unresolved) config node: what `hydra.utils.instantiate` builds."""
        if name not in group_files(self.group):
            raise UnknownNameError(self.kind, name, self.names())
        node = load_option(self.group, name)
        return node[self.key] if self.key is not None else node

    def target_path(self, name: str) -> str:
        node = self.config(name)
        if "_target_" not in node:
            raise DatamilError(f"{self.group}/{name}.yaml has no _target_; add `_target_: <module.Class>`")
        return str(node["_target_"])

    def get(self, name: str) -> Any:
        """The imported target (a class or function) of `group=name`."""
        from hydra.utils import get_object

        return self._resolve(get_object(self.target_path(name)))

    def name_of(self, obj: Any) -> str:
        """The option that declares `obj` as its own `_target_` (variants that inherit it do not count)."""
        for name in self.names():
            if self.get(name) is obj:
                return name
        raise DatamilError(
            f"{getattr(obj, '__name__', obj)} is no {self.kind} option; add datamil/configs/{self.group}/<name>.yaml "
            f"with _target_: {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
        )
