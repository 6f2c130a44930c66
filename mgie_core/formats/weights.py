"""Safe readers for weight files: safetensors, and pickles read with ``weights_only=True``.

Every failure becomes a one-line :class:`CheckpointError` naming the file and what to do;
a pickle that tries to run code is refused, never executed.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError
from .aligned import strip_padding

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def read_state_dict(path: str | Path) -> StateDict:
    """Read one weight file (``.safetensors`` memory-mapped, or a pickle with ``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_pickle(path)


def _read_safetensors(path: Path) -> StateDict:
    try:
        return strip_padding(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it is probably truncated or corrupt: "
            "copy or convert it again"
        ) from None


def _read_pickle(path: Path) -> StateDict:
    try:
        loaded = _torch_load(path, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise CheckpointError(
                f"{path} was refused: it holds pickled objects other than tensors, which could run code "
                "when loaded. Only plain weight files are accepted; get the file from its original source"
            ) from None
        raise _corrupt(path, err) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise _corrupt(path, err) from None
    return _as_state_dict(loaded, path)


def _torch_load(path: Path, mmap: bool) -> object:
    # mmap keeps multi-GB shards out of RAM until used; old non-zip pickles cannot be mapped.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointError(
        f"{path} could not be read ({reason}); the file is truncated or corrupt: download or copy it again"
    )


def _as_state_dict(loaded: object, path: Path) -> StateDict:
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a dictionary of tensors")
    state = {}
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor):
            state[str(key)] = value
        else:
            logger.debug("%s: skipping non-tensor entry %r", path, key)
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    return state


def read_sharded(index_path: str | Path) -> StateDict:
    """Read a ``*.index.json`` weight map and every shard it names."""
    index_path = Path(index_path)
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a valid shard index ({err}); restore the file") from None
    state: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(
                f"shard {shard_path} named in {index_path.name} is missing: copy every shard into {index_path.parent}"
            )
        state.update(read_state_dict(shard_path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index_path}: {len(missing)} tensors listed in the index are in no shard, e.g. {missing[0]}")
    return state


def read_folder_weights(folder: Path, stems: Iterable[str]) -> StateDict:
    """Read the weights of a transformers/diffusers-style folder, preferring safetensors.

    ``stems`` are file stems to look for, e.g. ``("model", "pytorch_model")``; for each, a single
    file or a sharded index is accepted.
    """
    tried = []
    for stem in stems:
        for name in (f"{stem}.safetensors", f"{stem}.safetensors.index.json", f"{stem}.bin", f"{stem}.bin.index.json"):
            candidate = folder / name
            tried.append(name)
            if candidate.is_file():
                if name.endswith(".index.json"):
                    return read_sharded(candidate)
                return read_state_dict(candidate)
    raise CheckpointError(f"no weights in {folder}: looked for {', '.join(tried)}")


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` (parameters may be on the meta device), strictly.

    Shapes and key sets are checked first so that a mismatch names the file and the tensor.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source}: weights do not fit the model: {'; '.join(parts)}; is this the right file?")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {key} has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(tensor.shape)}; the file does not belong to this configuration"
            )
    module.load_state_dict(dict(state), strict=True, assign=True)
