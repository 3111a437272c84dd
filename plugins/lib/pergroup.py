"""Per-group artifact layout (PR #1855 `_serialize_pergroup`, from PR #1586 via #1667/#1729).

The int8 code matrices are bucketed by role (the name without its `blocks.<i>.` prefix: `tok_emb.weight`,
`attn.c_k/c_q/c_v/proj.weight`, `mlp.fc/proj.weight`) and concatenated across layers (in layer order);
the rows of `tok_emb`, `c_q` and `mlp.fc` are first reordered by a greedy L1 nearest-neighbour walk
(the permutation is stored as uint16 in its own stream), and every matrix is stored transposed. Each
group is one stream with its own codec; everything else (scales, passthrough tensors, other codes, LQER
factors) is one torch.save'd stream of ordinary records whose grouped `data` is left empty.

The record compresses each group with `lrzip -z -L 9` (ZPAQ, an external binary) and the rest with
brotli-11 (lgwin 24). The `compress_pergroup` plugin uses lrzip when its binary is on PATH, else a
fallback (by default the smallest of zlib/zstd/brotli/lzma per group); each stream's codec is in the header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from core.export import ArtifactError, Codec, QTensor, Stream, load_records, save_records

RECORD_GROUPS = ("tok_emb.weight", "attn.c_k.weight", "attn.c_q.weight", "attn.c_v.weight", "attn.proj.weight",
                 "mlp.fc.weight", "mlp.proj.weight")
RECORD_SIMSORT = ("tok_emb.weight", "attn.c_q.weight", "mlp.fc.weight")
_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")


def group_key(name: str) -> tuple[str, int | None]:
    """(role, layer): `blocks.3.attn.c_q.weight` -> ("attn.c_q.weight", 3); other names -> (name, None)."""
    m = _LAYER.match(name)
    return (m.group(2), int(m.group(1))) if m else (name, None)


def member_name(key: str, layer: int | None) -> str:
    return key if layer is None else f"blocks.{layer}.{key}"


def similarity_order(matrix: np.ndarray) -> np.ndarray:
    """Greedy L1 nearest-neighbour row order from row 0 (ties: the lowest index), as PR #1855's
    `_similarity_sort_l1`."""
    x = matrix.astype(np.float32)
    n = x.shape[0]
    used = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    cur = 0
    order[0], used[0] = 0, True
    for i in range(1, n):
        dist = np.abs(x - x[cur]).sum(axis=1)
        dist[used] = np.inf
        cur = int(np.argmin(dist))
        order[i], used[cur] = cur, True
    return order


class PerGroupStateCodec:
    """A `core.export.StateCodec`: one stream per tensor role (int8 codes), one for the rest, one for the
    row permutations. `group_codec`/`rest_codec`/`perm_codec` None: the run's codec; `also_decodes`: codecs
    this run may find in an artifact besides its own (lrzip where the run fell back)."""

    name = "pergroup"

    def __init__(self, groups: Sequence[str] = RECORD_GROUPS, simsort: Sequence[str] = RECORD_SIMSORT,
                 group_codec: Codec | None = None, rest_codec: Codec | None = None,
                 perm_codec: Codec | None = None, also_decodes: Sequence[Codec] = ()) -> None:
        self.groups = tuple(groups)
        self.simsort = frozenset(simsort)
        self.group_codec, self.rest_codec, self.perm_codec = group_codec, rest_codec, perm_codec
        self.also_decodes = list(also_decodes)

    def codecs(self) -> list[Codec]:
        own = [c for c in (self.group_codec, self.rest_codec, self.perm_codec) if c is not None]
        return own + [c for c in self.also_decodes if c.name not in {o.name for o in own}]

    def encode(self, qstate: Mapping[str, QTensor]) -> tuple[list[Stream], dict[str, Any]]:
        members: dict[str, list[int | None]] = {g: [] for g in self.groups}
        for name, q in qstate.items():
            key, layer = group_key(name)
            if key in members and q.data.dtype == torch.int8 and q.data.ndim in (1, 2):
                members[key].append(layer)
        rest = dict(qstate)
        streams: list[Stream] = []
        perms: list[bytes] = []
        manifest_groups = []
        for key in self.groups:
            if not members[key]:
                continue
            layers = sorted(members[key], key=lambda i: -1 if i is None else i)
            parts, shapes = [], []
            sort = key in self.simsort
            for layer in layers:
                name = member_name(key, layer)
                q = qstate[name]
                arr = q.data.contiguous().numpy()
                if sort and arr.ndim == 2:
                    if arr.shape[0] > 65536:
                        raise ValueError(f"pergroup: tensor {name!r} has {arr.shape[0]} rows; the row "
                                         f"permutation is stored as uint16 (at most 65536 rows)")
                    order = similarity_order(arr)
                    perms.append(order.astype(np.uint16).tobytes())
                    arr = arr[order]
                parts.append(np.ascontiguousarray(arr.T).tobytes())
                shapes.append(list(arr.shape))
                rest[name] = QTensor(q.scheme, torch.empty(0, dtype=torch.int8), q.scale, q.dtype, q.shape,
                                     q.meta, q.extra)
            streams.append(Stream(f"group:{key}", b"".join(parts), self.group_codec))
            manifest_groups.append({"key": key, "layers": layers, "shapes": shapes, "sort": sort})
        streams.append(Stream("rest", save_records(rest), self.rest_codec))
        if perms:
            streams.append(Stream("perms", b"".join(perms), self.perm_codec))
        return streams, {"groups": manifest_groups, "perms": bool(perms)}

    def decode(self, raws: Sequence[bytes], manifest: Mapping[str, Any]) -> dict[str, QTensor]:
        groups = manifest.get("groups")
        if not isinstance(groups, list) or not isinstance(manifest.get("perms"), bool):
            raise ArtifactError("manifest needs 'groups' (a list) and 'perms' (a bool)")
        want = len(groups) + 1 + int(manifest["perms"])
        if len(raws) != want:
            raise ArtifactError(f"expected {want} streams for {len(groups)} groups, got {len(raws)}")
        records = load_records(raws[len(groups)], "stream 'rest'")
        perms = np.frombuffer(raws[-1], dtype=np.uint16) if manifest["perms"] else np.empty(0, np.uint16)
        perm_off = 0
        for raw, group in zip(raws, groups, strict=False):
            key, layers, shapes, sort = (group.get(k) for k in ("key", "layers", "shapes", "sort")) \
                if isinstance(group, dict) else (None,) * 4
            if not (isinstance(key, str) and isinstance(layers, list) and isinstance(shapes, list)
                    and len(layers) == len(shapes) and isinstance(sort, bool)):
                raise ArtifactError(f"bad group entry {group!r} (expected key, layers, shapes, sort)")
            codes = np.frombuffer(raw, dtype=np.int8)
            off = 0
            for layer, shape in zip(layers, shapes, strict=True):
                name = member_name(key, layer) if layer is None or isinstance(layer, int) else None
                if (name not in records or not isinstance(shape, list) or len(shape) not in (1, 2)
                        or not all(isinstance(d, int) and d >= 0 for d in shape)):
                    raise ArtifactError(f"group {key!r}: bad tensor entry (layer {layer!r}, shape {shape!r})")
                n = int(np.prod(shape))
                if off + n > codes.size:
                    raise ArtifactError(f"group {key!r}: stream too short for {name!r}")
                arr = codes[off:off + n].reshape(shape[::-1]).T
                off += n
                if sort and len(shape) == 2:
                    rows = shape[0]
                    order = perms[perm_off:perm_off + rows].astype(np.int64)
                    perm_off += rows
                    if order.size != rows or not np.array_equal(np.sort(order), np.arange(rows)):
                        raise ArtifactError(f"row permutation of {name!r} is not a permutation of {rows} rows")
                    unsorted = np.empty_like(arr)
                    unsorted[order] = arr
                    arr = unsorted
                q = records[name]
                records[name] = QTensor(q.scheme, torch.from_numpy(np.ascontiguousarray(arr)), q.scale, q.dtype,
                                        q.shape, q.meta, q.extra)
            if off != codes.size:
                raise ArtifactError(f"group {key!r}: {codes.size - off} bytes left over")
        if perm_off != perms.size:
            raise ArtifactError(f"{perms.size - perm_off} unused row-permutation entries")
        return records
