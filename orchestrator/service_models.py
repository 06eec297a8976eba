"""botocore's data files (service models, endpoint rules, paginators, waiters), read for a fraction
of the CPU botocore's own loader spends. A plan creates some seventeen clients, and reading their
files was a third of its CPU:

- botocore lists every service's folder (some 410) before it loads a file of one service, once
  per kind of file; `ServiceModels` looks in the named service's folder only;
- botocore parses JSON into an OrderedDict per object, a Python call each; `CachedJsonFiles`
  parses into plain dicts (same order; nothing in botocore needs more of one);
- once parsed, each file is kept in the user's cache folder as a pickle, and a later run loads
  that in about a third of the time the JSON takes. A service model is kept without its
  documentation strings, which botocore reads only to write help texts (a third of the bytes);
- a service model's shapes (ec2 has 4,613; a plan uses at most a few hundred of any service's)
  are kept one pickle each, inside the kept file, and a run decodes a shape only when botocore
  first asks for it (`LazyShapes`): loading ec2's model then takes about 1 ms instead of some 8,
  and the shapes no run asks for cost no memory beyond their bytes. botocore reads
  `model["shapes"]` only as a mapping (look-ups, `in`, iteration), so a mapping that decodes on
  first access is what it sees; a JSON-parsed model is a plain dict. The one exception is the
  merge of a service's sdk-extras (s3's, rds's, ...), whose `deep_merge` merges only into a dict:
  `ServiceModels` has the mapping merge the extras' shapes itself. Iterating the shapes decodes
  none, but botocore's `ServiceModel.error_shapes` (a client's first error response, or
  `client.exceptions`) looks every one up, and so decodes them all once: about twice the cost of
  loading the whole model, paid only by a client that gets an error response (none in a plan of
  an applied environment; several in one of a new environment, which costs what it did before).

The cache is keyed by each data file's path, size and modification time, so an upgrade of
botocore (or a model of the user's own in ~/.aws/models) is read afresh. Where the files are kept
and how (`orchestrator.kept`): files no run wrote for a month are removed; a cache folder that
cannot be read or written, or that another user could write in, is passed over, and the file is
then read as JSON. Kept files, and each shape kept in one, hold plain data only and are loaded by
an unpickler that refuses anything else (`PlainData`), so even a planted one can run no code. A
kept file that cannot be loaded is read as JSON instead; a shape that cannot be decoded (its bytes
damaged in a file that still loads, or planted) makes the model read its JSON file for the shapes
not yet decoded, and the kept file is removed for the next run to write again.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
from collections.abc import MutableMapping
from pathlib import Path

import botocore
from botocore.exceptions import DataNotFoundError
from botocore.loaders import JSONFileLoader, Loader, instance_cache
from botocore.utils import deep_merge

from orchestrator.kept import PlainData, cache_root, keep, read_kept

#: The extensions botocore's data files come with, in botocore's order: plain, then gzipped.
OPENERS = ((".json", open), (".json.gz", gzip.open))
#: The form of the kept files (what `without_documentation` leaves out, a service model's shapes
#: kept one pickle each): a new form, a new folder.
FORM = 2


def cache_folder() -> Path | None:
    """Where parsed data files are kept: this botocore's folder in the user's cache
    (`orchestrator.kept`), or None where the user has no home."""
    root = cache_root()
    return None if root is None else root / f"botocore-{botocore.__version__}-{FORM}"


def loader(data_path: str | None, cache: Path | None) -> Loader:
    """botocore's loader for a session, with the search paths botocore's `create_loader` gives it
    (the session's `data_path`, ~/.aws/models, botocore's own data), reading through `cache`."""
    extra = [os.path.expanduser(os.path.expandvars(path)) for path in data_path.split(os.pathsep)] \
        if data_path is not None else None
    return ServiceModels(extra_search_paths=extra, file_loader=CachedJsonFiles(cache))


class ServiceModels(Loader):
    """botocore's Loader, finding a service in its own folder instead of listing them all."""

    @instance_cache
    def load_service_model(self, service_name, type_name, api_version=None):
        if api_version is None:
            try:
                api_version = self.determine_latest_version(service_name, type_name)
            except DataNotFoundError:  # botocore's own answer: UnknownServiceError, naming the known ones
                return super().load_service_model(service_name, type_name)
        model = self.load_data(os.path.join(service_name, api_version, type_name))
        extras = self._find_extras(service_name, type_name, api_version)
        if isinstance(model.get("shapes"), LazyShapes):
            extras = [model["shapes"].merge_extras(each) for each in extras]
        self._extras_processor.process(model, extras)
        return model


class CachedJsonFiles(JSONFileLoader):
    """Reads a data file as plain dicts, through the cache folder when there is one."""

    def __init__(self, cache: Path | None):
        self.cache = cache

    def load_file(self, file_path):
        for extension, opener in OPENERS:
            path = file_path + extension
            try:
                info = os.stat(path)
            except OSError:
                continue
            kept = self._kept(path, info)
            model = os.path.basename(file_path) == "service-2"
            data = read_kept(kept)
            if data is not None and model:
                data = with_lazy_shapes(data, path, opener, kept)
            if data is None:
                data = parsed(path, opener, model)
                keep(kept, with_shapes_apart(data) if model else data, family="botocore-*")
            return data
        return None

    def _kept(self, path: str, info: os.stat_result) -> Path | None:
        if self.cache is None:
            return None
        key = hashlib.sha256(f"{path}\0{info.st_size}\0{info.st_mtime_ns}".encode()).hexdigest()[:32]
        return self.cache / f"{key}.pickle"


def parsed(path: str, opener, model: bool):
    """A data file parsed from its JSON; a service model without its documentation."""
    with opener(path, "rb") as file:
        data = json.loads(file.read().decode("utf-8"))
    return without_documentation(data) if model else data


def with_shapes_apart(model: dict) -> dict:
    """A service model as it is kept: each shape a pickle of its own, for `LazyShapes`."""
    return {**model, "shapes": {name: pickle.dumps(shape, protocol=pickle.HIGHEST_PROTOCOL)
                                for name, shape in model.get("shapes", {}).items()}}


def with_lazy_shapes(data, path: str, opener, kept_at: Path | None) -> dict | None:
    """A kept service model as botocore reads it: its shapes decoded when first asked for; None
    for a kept file that holds no service model (to be read from the JSON instead)."""
    if type(data) is not dict or type(data.get("shapes")) is not dict:
        return None
    data["shapes"] = LazyShapes(data["shapes"], path, opener, kept_at)
    return data


class LazyShapes(MutableMapping):
    """A service model's shapes by name, each decoded from its kept pickle (by `PlainData`) the
    first time it is looked up, and from then on the same dict: the merge of a service's
    sdk-extras changes shapes in place. Names, `in` and iteration never decode a shape.

    A shape that cannot be decoded is damaged (or planted): the shapes not yet decoded are then
    read from the model's JSON file, and the kept file is removed. Threads may decode the same
    shape at once; each gets an equal dict, and one of them is kept."""

    def __init__(self, kept: dict, path: str, opener, kept_at: Path | None):
        self._shapes = kept  # name -> the shape's pickle (bytes) until decoded, then its dict
        self._path, self._opener, self._kept_at = path, opener, kept_at

    def __getitem__(self, name):
        shape = self._shapes[name]
        if type(shape) is bytes:
            shape = self._decoded(shape)
            shape = self._shapes[name] = self._from_json(name) if shape is None else shape
        return shape

    def __setitem__(self, name, shape):
        self._shapes[name] = shape

    def __delitem__(self, name):
        del self._shapes[name]

    def __contains__(self, name):
        return name in self._shapes

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self):
        return len(self._shapes)

    def __repr__(self):
        return f"LazyShapes({len(self._shapes)} shapes, {self.decoded()} decoded)"

    def merge_extras(self, extras: dict) -> dict:
        """Merges the shapes a service's sdk-extras file adds or changes (s3's, docdb's, ...) as
        botocore's `ExtrasProcessor` would, and returns the rest of the file for it to merge:
        its `deep_merge` merges only into a dict, and would replace these shapes whole."""
        merge = extras.get("merge")
        if not isinstance(merge, dict) or not isinstance(merge.get("shapes"), dict):
            return extras
        for name, shape in merge["shapes"].items():
            if name in self and isinstance(self[name], dict) and isinstance(shape, dict):
                deep_merge(self[name], shape)
            else:
                self[name] = shape
        return {**extras, "merge": {key: value for key, value in merge.items() if key != "shapes"}}

    def decoded(self) -> int:
        """How many shapes were decoded so far."""
        return sum(1 for shape in self._shapes.values() if type(shape) is not bytes)

    @staticmethod
    def _decoded(kept: bytes) -> dict | None:
        try:
            shape = PlainData(io.BytesIO(kept)).load()
        except Exception:  # noqa: BLE001 -- damaged or not plain data: `_from_json`
            return None
        return shape if type(shape) is dict else None

    def _from_json(self, name: str) -> dict:
        fresh = parsed(self._path, self._opener, model=True)["shapes"]
        for each, shape in self._shapes.items():
            if type(shape) is bytes:
                self._shapes[each] = fresh[each]
        if self._kept_at is not None:
            with contextlib.suppress(OSError):
                self._kept_at.unlink()
        return self._shapes[name]


def without_documentation(model: dict) -> dict:
    """A service model without its documentation strings (the service's, each operation's, each
    shape's and member's), which botocore reads only to write help texts."""
    model.pop("documentation", None)
    for operation in model.get("operations", {}).values():
        operation.pop("documentation", None)
    for shape in model.get("shapes", {}).values():
        shape.pop("documentation", None)
        for member in shape.get("members", {}).values():
            member.pop("documentation", None)
    return model
