"""Load an environment's manifest: the base YAML deep-merged with the environment's overlay,
validated by `orchestrator.schema.Manifest`.

Every problem is reported at once as ``FILE:LINE: FIELD.PATH: message``, at the line of the
file that supplied the value after the merge. PyYAML's constructed dicts keep no line numbers
(and silently keep the last of two duplicate keys), so we compose the YAML nodes and build the
data ourselves, noting where each field came from.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import ManifestError
from orchestrator.schema import FieldError, Manifest

DEFAULT_BASE = "gamepulse.yaml"

FieldPath = tuple[str | int, ...]  # mapping keys and list indices, from the top of the manifest
Where = tuple[str, int]  # (file as given, 1-based line)
Problem = tuple[Where, str]  # where it is, and the line the user sees


def load_manifest(directory: Path | str, env: str) -> Manifest:
    """The validated manifest for `env`: `<directory>/<env>.yaml` merged onto its base.

    The overlay may name its base with a top-level `base:` key (a path relative to the
    overlay's directory); otherwise the base is `gamepulse.yaml`.
    """
    directory = Path(directory)
    environments = list_environments(directory)
    overlay_file = directory / f"{env}.yaml"
    if env not in environments:
        raise ManifestError([f"{overlay_file}: no such environment file; the environments in {directory} are: "
                             f"{', '.join(environments) or 'none'}"])
    overlay = _read(overlay_file)
    base = _read(_base_file(directory, overlay))
    if not base.data:  # every field would be reported missing, at the overlay's lines
        raise ManifestError([f"{base.label}:1: the base manifest is empty; it holds the settings every "
                             "environment shares (app, region, state, network, ...)"])
    for parsed in (base, overlay):
        _forbid_environment(parsed, env)
    problems = base.problems + overlay.problems
    data = _merge(base.data, overlay.data)
    data["environment"] = env
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        where = _merged_where(data, base.where, overlay.where)
        problems += [_pydantic_problem(error, where) for error in err.errors(include_url=False)]
    if problems:
        file_order = {base.label: 0, overlay.label: 1}
        problems.sort(key=lambda problem: (file_order[problem[0][0]], problem[0][1]))
        raise ManifestError([text for _, text in problems])
    return manifest


def with_image_tags(manifest: Manifest, tags: dict[str, str]) -> Manifest:
    """The manifest deploying other image tags (`apply --image-tag gamepulse=1.4.2`): a pipeline
    deploys a new version without editing files. Each name is a key of images.repositories."""
    if not tags:
        return manifest
    data = manifest.model_dump()
    repositories = data["images"]["repositories"]
    for name, tag in tags.items():
        if name not in repositories:
            raise ManifestError([f"--image-tag {name}={tag}: {name!r} is not one of images.repositories "
                                 f"({', '.join(sorted(repositories))})"])
        repositories[name]["tag"] = tag
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError([f"--image-tag: {_human(error)}" for error in err.errors(include_url=False)]) from None


def with_redeploys(manifest: Manifest, names) -> Manifest:
    """The manifest asking for a new deployment of these services though nothing changed
    (`apply --redeploy gamepulse`: tasks restarted, e.g. to read a value they cache). Each name
    is a key of services.tasks."""
    names = frozenset(names)
    if not names:
        return manifest
    tasks = manifest.services.tasks if manifest.services else {}
    unknown = sorted(names - set(tasks))
    if unknown:
        raise ManifestError([f"--redeploy {name}: {name!r} is not one of services.tasks "
                             f"({', '.join(sorted(tasks)) or 'none'})" for name in unknown])
    copy = manifest.model_copy()
    copy._redeploy = names
    return copy


def list_environments(directory: Path | str) -> list[str]:
    """The environments a directory defines: its `*.yaml` files other than the base."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ManifestError([f"{directory}: manifests directory not found"])
    return sorted(file.stem for file in directory.glob("*.yaml") if file.name != DEFAULT_BASE)


def manifest_hash(manifest: Manifest) -> str:
    """sha256 of the manifest's canonical JSON: equal manifests hash equal, whatever their YAML looked like."""
    canonical = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def json_schema() -> dict:
    """The JSON Schema of a manifest, for editors (`orchestrator schema`)."""
    return Manifest.model_json_schema()


# --- reading one file ----------------------------------------------------------------------


@dataclass
class _Parsed:
    """One YAML file as plain data, with the line of every field and the problems found reading it."""

    label: str
    data: dict = field(default_factory=dict)
    where: dict[FieldPath, Where] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def build(self, node: yaml.Node, path: FieldPath, line: int, loader: yaml.SafeLoader) -> Any:
        """The value of `node`; `line` is where the field starts (its key's line, for a mapping entry)."""
        self.where[path] = (self.label, line)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, loader)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (index,), _line(item), loader) for index, item in enumerate(node.value)]
        return loader.construct_object(node)

    def _mapping(self, node: yaml.MappingNode, path: FieldPath, loader: yaml.SafeLoader) -> dict:
        result: dict = {}
        first_lines: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain name, not a list or a mapping", key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<) are not supported; write the fields out", key_node.start_mark)
            key = loader.construct_object(key_node)
            line = _line(key_node)
            if key in first_lines:
                self.problems.append(_problem((self.label, line), path + (key,),
                                              f"duplicate key (first set at line {first_lines[key]})"))
            first_lines.setdefault(key, line)
            result[key] = self.build(value_node, path + (key,), line, loader)
        return result


def _read(file: Path) -> _Parsed:
    """Composed by libyaml's C parser (a tenth of the pure-Python one's CPU; its nodes carry the
    same marks). Where it finds the YAML invalid, PyYAML's own parser reads the file again, so the
    message the user sees is PyYAML's, whatever libyaml would have said."""
    text = file.read_text(encoding="utf-8")
    try:
        return _parse(str(file), text, _SAFE_LOADER)
    except yaml.MarkedYAMLError:
        pass
    try:
        return _parse(str(file), text, yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}"
        raise ManifestError([f"{where}: invalid YAML: {err.problem}"]) from None


#: libyaml's parser with PyYAML's safe constructor, when PyYAML was built with libyaml.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse(label: str, text: str, loader_class: type[yaml.SafeLoader]) -> _Parsed:
    parsed = _Parsed(label)
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        if root is None:  # an empty file: an overlay that changes nothing
            parsed.where[()] = (parsed.label, 1)
        elif isinstance(root, yaml.MappingNode):
            parsed.data = parsed.build(root, (), _line(root), loader)
        else:
            raise ManifestError([f"{parsed.label}:1: the top level must be a mapping of field names to values"])
    finally:
        loader.dispose()
    return parsed


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _base_file(directory: Path, overlay: _Parsed) -> Path:
    """The base the overlay names with `base:`, else the default; the key is removed from the data."""
    name = overlay.data.pop("base", DEFAULT_BASE)
    file = directory / name if isinstance(name, str) else None
    if file is not None and file.is_file():
        return file
    if ("base",) not in overlay.where:
        raise ManifestError([f"{file}: base manifest not found (an overlay may name another with 'base:')"])
    problem = f"{file} not found" if file is not None else "must be a file name"
    raise ManifestError([_format(overlay.where[("base",)], ("base",), problem)])


def _forbid_environment(parsed: _Parsed, env: str) -> None:
    """A manifest may not set `environment`: it is the overlay's file name, so the two never disagree."""
    if "environment" in parsed.data:
        del parsed.data["environment"]
        parsed.problems.append(_problem(parsed.where[("environment",)], ("environment",),
                                        f"may not be set in a manifest; it comes from the overlay's file name ({env})"))


# --- merging and reporting -----------------------------------------------------------------


def _merge(base: Any, overlay: Any) -> Any:
    """Maps merge key by key, recursively; any other value in the overlay replaces the base's."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return overlay


def _merged_where(data: dict, base: dict[FieldPath, Where], overlay: dict[FieldPath, Where]) -> dict[FieldPath, Where]:
    """Where each merged field came from: the overlay if it set it, else the base.

    A base field survives only if the merged data still has it (an overlay list or scalar that
    replaced its parent took it away).
    """
    return {**{path: where for path, where in base.items() if _has(data, path)}, **overlay}


def _has(data: Any, path: FieldPath) -> bool:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False
    return True


def _pydantic_problem(error: dict, where: dict[FieldPath, Where]) -> Problem:
    path, message = error["loc"], _human(error)
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):  # a whole-section check that knows the field at fault
        path = tuple(path) + tuple(cause.at)
    if path and path[-1] == "[key]":  # pydantic's marker for a bad mapping key (the key is the part before)
        path, message = path[:-1], f"the key {message}"
    # A missing field (or any location the data lacks) is reported at its nearest present parent.
    located = next(where[path[:end]] for end in range(len(path), -1, -1) if path[:end] in where)
    return _problem(located, path, message)


def _human(error: dict) -> str:
    """Pydantic's message in the words of a manifest, with the offending value where that helps."""
    kind, value = error["type"], error["input"]
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field" + _suggestion(error["loc"])
    if kind == "literal_error":
        return f"must be one of {error['ctx']['expected']} (got {value!r})"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    message = "should be a mapping" if kind == "model_type" else error["msg"].removeprefix("Input ")
    if isinstance(value, (str, int, float, bool)) or value is None:
        message += f" (got {value!r})"
    return message


def _suggestion(path: FieldPath) -> str:
    """What follows "unknown field" when the key is close to a field of its section, e.g.
    "; did you mean `zones`?". A field is also known by the first word of its description: users
    write `file:` for the field `path`, described "file holding the value"."""
    model = _model_at(path[:-1])
    if model is None:
        return ""
    names = {name: name for name in model.model_fields}
    for name, info in model.model_fields.items():
        words = (info.description or "").split()
        if words:
            names.setdefault(words[0], name)
    match = difflib.get_close_matches(str(path[-1]), names, n=1)
    return f"; did you mean `{names[match[0]]}`?" if match else ""


def _model_at(path: FieldPath) -> type[BaseModel] | None:
    """The section model of the manifest at `path`, following fields, mapping values and list items."""
    kind: Any = Manifest
    for part in path:
        kind = next((inner for option in _options(kind) if (inner := _inner(option, part)) is not None), None)
    models = [option for option in _options(kind) if isinstance(option, type) and issubclass(option, BaseModel)]
    return models[0] if models else None


def _options(kind: Any) -> tuple:
    """The types a union allows (`X | None`), or the type itself."""
    return typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)


def _inner(kind: Any, part: str | int) -> Any:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind.model_fields[part].annotation if part in kind.model_fields else None
    if typing.get_origin(kind) is dict:
        return typing.get_args(kind)[1]
    if typing.get_origin(kind) is list and isinstance(part, int):
        return typing.get_args(kind)[0]
    return None


def _problem(where: Where, path: FieldPath, message: str) -> Problem:
    return where, _format(where, path, message)


def _format(where: Where, path: FieldPath, message: str) -> str:
    file, line = where
    dotted = ".".join(str(part) for part in path)
    return f"{file}:{line}: {dotted}: {message}" if dotted else f"{file}:{line}: {message}"
