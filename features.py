"""features.py -- the pooled SAE features' store and the plumbing of sae.py's encoder: nothing here
changes which features a problem gets.
Imports: runtime (cache keys) and sae_formats (the SAE, safetensors writes) from this project.

    PooledFeatures            top-m values and indices per problem; dense rows of a subset, a sparse CSR
                              matrix of all, the probes' columns (most_active / columns / predict), a file
    model_fingerprint, sae_fingerprint   what identifies a model or an SAE in a cache key
    ShardCache                encode_problems' resumable cache (shards of finished batches)
    text_heads                each text cut to a head that still holds max_length tokens (bounded tokenizing)
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from runtime import stable_hash
from sae_formats import SAE, save_safetensors


@dataclass
class PooledFeatures:
    """Top-m pooled SAE features per problem: values [N, m] float32, indices [N, m] int64 into
    d_sae. Rows with fewer than m active features are padded with value 0."""
    values: torch.Tensor
    indices: torch.Tensor
    d_sae: int

    def __len__(self) -> int:
        return self.values.shape[0]

    def dense(self, rows: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """[len(rows), d_sae] dense features of a subset (all rows when None: mind the memory)."""
        idx = torch.arange(len(self)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        out = torch.zeros(len(idx), self.d_sae, dtype=self.values.dtype)
        return out.scatter_(1, self.indices[idx], self.values[idx])

    def sparse(self) -> torch.Tensor:
        """[N, d_sae] torch sparse CSR matrix holding only the non-zero pooled values."""
        keep = self.values != 0
        row = torch.arange(len(self)).unsqueeze(1).expand_as(self.values)[keep]
        coo = torch.sparse_coo_tensor(torch.stack([row, self.indices[keep]]), self.values[keep],
                                      (len(self), self.d_sae), check_invariants=False).coalesce()
        with warnings.catch_warnings():  # torch calls CSR "beta" on every first use; it is what we need
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return coo.to_sparse_csr()

    def most_active(self, rows, n: int) -> np.ndarray:
        """The n feature ids most often active among `rows` (ties by id), sorted: the probes' columns."""
        counts = torch.bincount(self.indices[rows][self.values[rows] != 0].reshape(-1), minlength=self.d_sae)
        order = torch.argsort(-counts, stable=True)
        return np.sort(order[counts[order] > 0][:n].numpy())

    def columns(self, rows, cols: np.ndarray) -> np.ndarray:
        """Dense [len(rows), len(cols)] float64 block of the features `cols` (other features dropped)."""
        rows = list(rows)
        lookup = torch.full((self.d_sae,), -1, dtype=torch.long)
        lookup[torch.as_tensor(cols, dtype=torch.long)] = torch.arange(len(cols))
        idx = lookup[self.indices[rows]]  # [R, m], -1 where not a column
        vals = torch.where(idx >= 0, self.values[rows].double(), torch.zeros((), dtype=torch.float64))
        out = torch.zeros(len(rows), len(cols) + 1, dtype=torch.float64)  # the last column collects the rest
        out.scatter_add_(1, torch.where(idx >= 0, idx, torch.full_like(idx, len(cols))), vals)
        return out[:, :-1].numpy()

    def predict(self, predict, cols: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """predict(columns block) over every row, a chunk of rows at a time (memory O(chunk x cols))."""
        n = len(self)
        return np.concatenate([np.asarray(predict(self.columns(range(i, min(n, i + chunk)), cols)))
                               for i in range(0, n, chunk)])

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        meta = {"d_sae": str(self.d_sae), **{k: str(v) for k, v in (metadata or {}).items()}}
        save_safetensors({"values": self.values, "indices": self.indices}, Path(path), meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PooledFeatures":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "d_sae" not in meta:
                raise ValueError(f"{path}: no d_sae in the safetensors metadata; not a PooledFeatures file")
            return cls(f.get_tensor("values"), f.get_tensor("indices"), int(meta["d_sae"]))


def model_fingerprint(model, tokenizer=None) -> str:
    """Identity of a model for cache keys: name/path, config, a sample of weights, tokenizer."""
    h = hashlib.sha256()
    h.update(str(getattr(model.config, "_name_or_path", "")).encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    params = list(model.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]):
        h.update(p.detach().flatten()[:4096].to("cpu", torch.float32).numpy().tobytes())
    if tokenizer is not None:
        h.update(json.dumps([getattr(tokenizer, "name_or_path", ""), len(tokenizer),
                             tokenizer.all_special_ids]).encode())
    return h.hexdigest()


def sae_fingerprint(sae: SAE) -> str:
    """sha256 over an SAE's configuration and every weight byte (cache keys)."""
    h = hashlib.sha256(json.dumps([sae.activation, sae.k, sae.apply_b_dec_to_input, sae.input_norm]).encode())
    for name, t in sorted(sae.state_dict().items()):
        if t is not None:
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class ShardCache:
    """encode_problems' resumable cache: under cache_dir/<key>/ (key: a hash of key_parts: the model, the
    SAE, layer, pooling, top_m, max_length, texts, spans) the finished batches are written as shards of
    `shard_batches` batches, and the assembled result as features.safetensors, after which the shards
    are deleted. A killed run resumes from its shards."""

    def __init__(self, cache_dir: str | os.PathLike, key_parts: Sequence, n_batches: int, shard_batches: int):
        self.dir = Path(cache_dir) / stable_hash(*key_parts)[:24]
        self.final = self.dir / "features.safetensors"
        self.n_batches, self.shard_batches = n_batches, shard_batches
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def finished(self) -> PooledFeatures | None:
        """The assembled result of an earlier run, or None (then the shard folder is made)."""
        if self.final.exists():
            return PooledFeatures.load(self.final)
        self.dir.mkdir(parents=True, exist_ok=True)
        return None

    def _shard(self, batch: int) -> Path:
        return self.dir / f"shard_{batch // self.shard_batches:05d}.safetensors"

    def restore(self, batch: int, values: torch.Tensor, indices: torch.Tensor) -> bool:
        """True when `batch` lies in a shard already written; its rows are filled in once, at the shard's
        first batch."""
        path = self._shard(batch)
        if not path.exists():
            return False
        if batch % self.shard_batches == 0:
            done = load_file(str(path))
            values[done["rows"]], indices[done["rows"]] = done["values"], done["indices"]
        return True

    def add(self, batch: int, rows: Sequence[int], values: torch.Tensor, indices: torch.Tensor) -> None:
        """One encoded batch; the shard is written at its last batch (or the run's last)."""
        self.pending.append((torch.tensor(rows), values, indices))
        if batch == self.n_batches - 1 or (batch + 1) % self.shard_batches == 0:
            rows_, values_, indices_ = (torch.cat(x) for x in zip(*self.pending))
            save_safetensors({"rows": rows_, "values": values_, "indices": indices_}, self._shard(batch))
            self.pending = []

    def finish(self, features: PooledFeatures, metadata: dict) -> None:
        features.save(self.final, metadata)
        for p in self.dir.glob("shard_*.safetensors"):
            p.unlink()


# A token is a few characters on average (about 4 for English and LaTeX under the BPE vocabularies of math
# models), so a text's first max_length tokens lie well inside its first CHARS_PER_TOKEN * max_length
# characters. Tokenizers truncate only after tokenizing the whole text: a 10 MB text costs 4 GB and half a
# minute even with truncation=True, so texts are cut to such a head first (text_heads).
CHARS_PER_TOKEN = 32


def text_heads(tokenizer, texts: Sequence[str], max_length: int) -> list[str]:
    """Each text, or a head of it that still holds more than max_length tokens: tokenized and truncated to
    max_length, it gives the whole text's tokens while the tokenizer's work stays bounded whatever the input.
    A head with too few tokens (tokens longer than CHARS_PER_TOKEN characters on average) is doubled until it
    has enough or is the whole text."""
    heads, budget = list(texts), CHARS_PER_TOKEN * (max_length + 1)
    long = [i for i, t in enumerate(heads) if len(t) > budget]
    while long:
        cut = [texts[i][:budget] for i in long]
        counts = [len(ids) for ids in tokenizer(cut, add_special_tokens=False, truncation=True,
                                                max_length=max_length + 1)["input_ids"]]
        for i, head, n in zip(long, cut, counts):
            if n > max_length:
                heads[i] = head
        budget *= 2
        long = [i for i, n in zip(long, counts) if n <= max_length and len(texts[i]) > budget]
    return heads
