"""Error replay memory of ERFT: the model's own one-step errors, bucketed by timestep.

Error-Recycling Fine-Tuning stores the errors the model makes during training (latent-shaped
tensors, e.g. (16, T, h, w)) in buckets indexed by the timestep-grid index n, and later injects
samples of them into clean training inputs so the model learns to correct its own drift.

At paper scale the memory is a real design constraint: one 81x480x832 error is 4 MiB in bf16, a
bucket of Z = 500 is 2 GiB and a full bank of 50 buckets ~100 GiB. Hence:

- storage grows in chunks of `grow_by` entries as a bucket fills (never a full bucket up front) and
  an insert writes one entry in place: O(D), no re-stacking of the bucket;
- a memory budget (`budget_bytes`) caps Z once the entry size is known: the effective capacity is
  min(Z, what fits);
- storage dtype float32 | bfloat16 | float16 | float8 (e4m3 with a float32 scale per entry,
  dequantised on read); storage device cpu (pinned when CUDA is available, for fast copies to the
  GPU) or cuda;
- replacement of the nearest entry when a bucket is full: "l2" searches exactly (reads the whole
  bucket, O(Z*D)); "l2_sketch" searches in a count-sketch space (O(D) per insert to sketch the new
  error, then O(Z*k)), optionally re-ranking the best `sketch_rerank` candidates exactly.

Every knob is declared once, in `MemoryConfig` (`conf/memory/*.yaml` sets it; the replay callback
receives it as one node). The training module only reads the memory, through a `MemoryReader`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

REPLACEMENTS = ("l2", "l2_sketch", "random", "fifo")
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                  "float8": torch.float8_e4m3fn}
_FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448: the per-entry scale maps max|e| here


@dataclass
class MemoryConfig:
    """The replay memory's knobs (paper values); `conf/memory/*.yaml` sets them, typed."""

    num_grids: int = 50  # N_test: buckets = nearest of the 50 shifted inference timesteps
    capacity: int = 500  # Z: errors kept per bucket
    replacement: str = "l2"  # full bucket: l2 (exact nearest) | l2_sketch (nearest in sketch space) | random | fifo
    warmup_steps: int = 50  # W: iterations during which all ranks all-gather their errors
    dtype: str = "float32"  # storage dtype: float32 | bfloat16 | float16 | float8 (e4m3 + a scale per entry)
    device: str = "cpu"  # where the banks live: cpu (pinned when CUDA is available) | cuda
    budget_gib: Optional[float] = None  # cap on both banks' bytes; Z shrinks to fit (None: Z only)
    grow_by: int = 16  # entries allocated at a time as a bucket fills
    sketch_dim: int = 256  # l2_sketch: count-sketch size per entry
    sketch_rerank: int = 0  # l2_sketch: re-rank this many best sketch candidates exactly (0: none)
    pin_memory: Optional[bool] = None  # pin CPU storage; None: when CUDA is available

    def __post_init__(self) -> None:
        if self.replacement not in REPLACEMENTS:
            raise ValueError(f"memory.replacement must be one of {REPLACEMENTS}, got {self.replacement!r}")
        for name in ("num_grids", "capacity", "grow_by", "sketch_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"memory.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.sketch_rerank < 0:
            raise ValueError(f"memory.warmup_steps and memory.sketch_rerank must be >= 0, got "
                             f"{self.warmup_steps}, {self.sketch_rerank}")
        if self.budget_gib is not None and self.budget_gib <= 0:
            raise ValueError(f"memory.budget_gib must be positive or null, got {self.budget_gib}")
        storage_dtype(self.dtype)  # validates the name

    @property
    def budget_bytes(self) -> int | None:
        return None if self.budget_gib is None else int(self.budget_gib * 2**30)


def storage_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' | 'float8' (or the torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in STORAGE_DTYPES.values():
            raise ValueError(f"memory dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype}")
        return dtype
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"memory dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    return STORAGE_DTYPES[dtype]


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in STORAGE_DTYPES.items() if v == dtype)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """One uniform draw from [0, high), on the generator's device so a CUDA generator works too."""
    device = generator.device if generator is not None else None
    return int(torch.randint(high, (1,), generator=generator, device=device).item())


class CountSketch:
    """A k-dim count-sketch of D-dim vectors: S x = sum_i sign_i x_i e_{hash_i}; O(D) per vector.

    E[<S a, S b>] = <a, b>, so squared distances are estimated as |a|^2 + |b|^2 - 2 <S a, S b> with the
    exact norms. The hash and signs are drawn from `seed`, so the same seed gives the same sketch.
    """

    def __init__(self, dim: int, k: int, seed: int, device: torch.device):
        g = torch.Generator().manual_seed(seed)
        self.dim, self.k, self.seed = dim, k, seed
        self.index = torch.randint(0, k, (dim,), generator=g).to(device)  # (D,) int64 bin of each coordinate
        self.sign = (torch.randint(0, 2, (dim,), generator=g) * 2 - 1).float().to(device)  # (D,) +-1

    @property
    def nbytes(self) -> int:
        return self.index.numel() * self.index.element_size() + self.sign.numel() * self.sign.element_size()

    def __call__(self, x: Tensor) -> Tensor:
        """x (D,) float32 -> (k,) float32."""
        return torch.zeros(self.k, dtype=torch.float32, device=x.device).index_add_(0, self.index, x * self.sign)


class _Bucket:
    """One timestep bucket: entries in chunks (allocated as it fills) and per-entry metadata rows."""

    def __init__(self):
        self.chunks: list[Tensor] = []  # each (rows, *entry_shape) in the storage dtype
        self.starts: list[int] = []  # first slot of each chunk
        self.norms: Tensor | None = None  # (allocated,) float32 |stored entry|^2   (l2, l2_sketch)
        self.scales: Tensor | None = None  # (allocated,) float32 dequantisation scale (float8)
        self.sketches: Tensor | None = None  # (allocated, k) float32 (l2_sketch)
        self.count = 0
        self.fifo_ptr = 0  # oldest slot once the bucket is full

    @property
    def allocated(self) -> int:
        return self.starts[-1] + self.chunks[-1].shape[0] if self.chunks else 0

    def locate(self, slot: int) -> tuple[Tensor, int]:
        for start, chunk in zip(reversed(self.starts), reversed(self.chunks)):
            if slot >= start:
                return chunk, slot - start
        raise AssertionError(f"slot {slot} not allocated")  # internal invariant


class ErrorBank:
    """Errors bucketed by timestep grid; capacity Z per bucket (or what a memory budget allows).

    Args:
        config: the `MemoryConfig` (buckets, Z, replacement, storage dtype and device, chunk size,
            sketch size and re-ranking, pinning); the budget comes from `budget_bytes`.
        budget_bytes: cap on this bank's bytes; the effective capacity min(Z, fits) is derived at the
            first insert, when the entry size is known. None: Z only.
        sketch_seed: seed of the count-sketch of "l2_sketch".
    """

    search_block = 1 << 22  # elements per float32 block of the exact search (bounds upcast memory)

    def __init__(self, config: MemoryConfig | None = None, budget_bytes: int | None = None, sketch_seed: int = 0):
        config = config or MemoryConfig()
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive or None, got {budget_bytes}")
        self.config = config
        self.num_buckets, self.capacity, self.replacement = config.num_grids, config.capacity, config.replacement
        self.dtype, self.device = storage_dtype(config.dtype), torch.device(config.device)
        self.budget_bytes = None if budget_bytes is None else int(budget_bytes)
        self.grow_by, self.sketch_dim, self.sketch_seed = config.grow_by, config.sketch_dim, int(sketch_seed)
        self.sketch_rerank = config.sketch_rerank
        pin = config.pin_memory
        if pin is None:
            pin = self.device.type == "cpu" and torch.cuda.is_available()
        self.pin_memory = bool(pin) and self.device.type == "cpu"
        self._reset()

    def _reset(self) -> None:
        self.entry_shape: tuple[int, ...] | None = None
        self.effective_capacity: int | None = None  # Z after the budget; known once entry_shape is
        self._sketch: CountSketch | None = None
        self._buckets = [_Bucket() for _ in range(self.num_buckets)]
        self.num_inserted = self.num_replaced = self.num_nonfinite = 0

    # ------------------------------------------------------------------ sizes
    @property
    def quantized(self) -> bool:
        return self.dtype == torch.float8_e4m3fn

    @property
    def _uses_norms(self) -> bool:
        return self.replacement in ("l2", "l2_sketch")

    @property
    def entry_nbytes(self) -> int:
        """Bytes per stored entry: the error itself plus its norm / scale / sketch."""
        if self.entry_shape is None:
            raise RuntimeError("the entry size is known only after the first insert")
        n = math.prod(self.entry_shape) * self.dtype.itemsize
        n += 4 * self._uses_norms + 4 * self.quantized
        n += 4 * self.sketch_dim * (self.replacement == "l2_sketch")
        return n

    @property
    def z(self) -> int:
        """The per-bucket capacity in force: Z, or the budget-derived value once known."""
        return self.capacity if self.effective_capacity is None else self.effective_capacity

    def _resolve(self, shape: tuple[int, ...]) -> None:
        """First insert: fix the entry shape, derive the effective capacity, build the sketch."""
        self.entry_shape = tuple(int(s) for s in shape)
        numel = math.prod(self.entry_shape)
        fixed = 0
        if self.replacement == "l2_sketch":
            self._sketch = CountSketch(numel, self.sketch_dim, self.sketch_seed, self.device)
            fixed = self._sketch.nbytes
        z = self.capacity
        if self.budget_bytes is not None:
            fits = (self.budget_bytes - fixed) // (self.num_buckets * self.entry_nbytes)
            if fits < 1:
                raise ValueError(f"memory budget {self.budget_bytes / 2**30:.3g} GiB per bank holds no entry of "
                                 f"shape {self.entry_shape} ({self.entry_nbytes / 2**20:.2f} MiB) in each of "
                                 f"{self.num_buckets} buckets: raise memory.budget_gib or lower the dtype")
            z = min(z, int(fits))
        self.effective_capacity = z

    # ------------------------------------------------------------------ inspection
    def _check_bucket(self, bucket: int) -> int:
        bucket = int(bucket)
        if not 0 <= bucket < self.num_buckets:
            raise IndexError(f"bucket {bucket} out of range [0, {self.num_buckets})")
        return bucket

    @property
    def counts(self) -> Tensor:
        return torch.tensor([b.count for b in self._buckets], dtype=torch.long)  # (num_buckets,)

    def __len__(self) -> int:
        return sum(b.count for b in self._buckets)

    def is_empty(self, bucket: int) -> bool:
        return self._buckets[self._check_bucket(bucket)].count == 0

    @property
    def nonempty_mask(self) -> Tensor:
        return self.counts > 0  # (num_buckets,) bool

    @property
    def fill_fraction(self) -> float:
        return len(self) / (self.num_buckets * self.z)

    @property
    def nbytes(self) -> int:
        """Bytes held: allocated chunks, per-entry metadata and the sketch table."""
        total = self._sketch.nbytes if self._sketch is not None else 0
        for b in self._buckets:
            for t in (*b.chunks, b.norms, b.scales, b.sketches):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def entries(self, bucket: int) -> Tensor:
        """The stored entries of a bucket in the storage dtype, (count, *entry_shape) (a copy)."""
        bk = self._buckets[self._check_bucket(bucket)]
        if bk.count == 0:
            return torch.empty((0, *(self.entry_shape or ())), dtype=self.dtype, device=self.device)
        return torch.cat(bk.chunks)[: bk.count]

    def values(self, bucket: int) -> Tensor:
        """The stored entries of a bucket as float32 (dequantised), (count, *entry_shape)."""
        out = self.entries(bucket).float()
        bk = self._buckets[bucket]
        if self.quantized and bk.count:
            out = out * bk.scales[: bk.count].view(-1, *[1] * len(self.entry_shape))
        return out

    # ------------------------------------------------------------------ storage
    def _grow(self, bk: _Bucket) -> None:
        rows = min(self.grow_by, self.z - bk.allocated)
        assert rows > 0, "grow past the capacity"
        chunk = torch.empty((rows, *self.entry_shape), dtype=self.dtype, device=self.device,
                            pin_memory=self.pin_memory)
        bk.starts.append(bk.allocated)
        bk.chunks.append(chunk)

        def extend(meta: Tensor | None, *shape: int) -> Tensor:
            new = torch.zeros((rows, *shape), dtype=torch.float32, device=self.device)
            return new if meta is None else torch.cat([meta, new])

        if self._uses_norms:
            bk.norms = extend(bk.norms)
        if self.quantized:
            bk.scales = extend(bk.scales)
        if self.replacement == "l2_sketch":
            bk.sketches = extend(bk.sketches, self.sketch_dim)

    def _read(self, bk: _Bucket, slot: int) -> Tensor:
        """Slot -> a new float32 tensor (dequantised), (*entry_shape)."""
        chunk, row = bk.locate(slot)
        out = chunk[row].to(torch.float32, copy=True)
        if self.quantized:
            out.mul_(bk.scales[slot])
        return out

    def _write(self, bk: _Bucket, slot: int, error: Tensor) -> None:
        chunk, row = bk.locate(slot)
        if self.quantized:
            e = error.to(device=self.device, dtype=torch.float32)
            amax = float(e.abs().max())
            scale = amax / _FP8_MAX if amax > 0 else 1.0
            chunk[row].copy_(e / scale)
            bk.scales[slot] = scale
        else:
            chunk[row].copy_(error)  # converts dtype/device in place, no bucket-sized allocation
        if self._uses_norms:
            stored = self._read(bk, slot).reshape(-1)  # the rounded value: distances to it are exact
            bk.norms[slot] = stored.dot(stored)
            if self.replacement == "l2_sketch":
                bk.sketches[slot] = self._sketch(stored)

    # ------------------------------------------------------------------ nearest-neighbour search
    def _dots(self, bk: _Bucket, e: Tensor) -> Tensor:
        """<stored_i, e> for every filled slot, float32 (count,); reads the whole bucket once."""
        dots = torch.empty(bk.count, dtype=torch.float32, device=self.device)
        for start, chunk in zip(bk.starts, bk.chunks):
            flat = chunk.view(chunk.shape[0], -1)  # (rows, D)
            acc = torch.zeros(flat.shape[0], dtype=torch.float32, device=self.device)
            step = max(1, self.search_block // flat.shape[0])
            for j in range(0, flat.shape[1], step):  # bounded float32 upcast of a bf16/fp8 bucket
                acc += flat[:, j : j + step].float() @ e[j : j + step]
            dots[start : start + flat.shape[0]] = acc
        if self.quantized:
            dots *= bk.scales[: bk.count]
        return dots

    def _nearest_slot(self, bk: _Bucket, error: Tensor) -> int:
        """The slot to replace in a full bucket under "l2" / "l2_sketch" (the ||e||^2 term is constant)."""
        e = error.reshape(-1).to(device=self.device, dtype=torch.float32)  # (D,)
        norms = bk.norms[: bk.count]
        if self.replacement == "l2":
            return int(torch.argmin(norms - 2.0 * self._dots(bk, e)))
        approx = norms - 2.0 * (bk.sketches[: bk.count] @ self._sketch(e))  # (count,)
        m = min(self.sketch_rerank, bk.count)
        if m <= 1:
            return int(torch.argmin(approx))
        cand = torch.topk(approx, m, largest=False).indices.tolist()
        exact = [float(norms[s]) - 2.0 * float(self._read(bk, s).reshape(-1) @ e) for s in cand]
        return cand[min(range(m), key=exact.__getitem__)]

    # ------------------------------------------------------------------ insertion
    def check_shape(self, shape: tuple[int, ...] | torch.Size) -> None:
        """The first insert fixes the entry shape; mixing shapes would make buckets unsampleable."""
        if self.entry_shape is not None and tuple(shape) != self.entry_shape:
            raise ValueError(f"error shape {tuple(shape)} does not match the bank's entry shape "
                             f"{self.entry_shape}")

    def add(self, bucket: int, error: Tensor, generator: torch.Generator | None = None) -> bool:
        """Store a copy of `error` in `bucket`; returns False (and counts it) if it is non-finite."""
        bucket = self._check_bucket(bucket)
        error = error.detach()
        self.check_shape(error.shape)
        if not bool(torch.isfinite(error).all()):
            self.num_nonfinite += 1  # a diverged step must not poison the memory
            return False
        if self.entry_shape is None:
            self._resolve(error.shape)
        bk = self._buckets[bucket]
        if bk.count < self.z:
            slot = bk.count
            if slot == bk.allocated:
                self._grow(bk)
            bk.count += 1
        else:
            if self.replacement in ("l2", "l2_sketch"):
                slot = self._nearest_slot(bk, error)
            elif self.replacement == "random":
                slot = _randint(self.z, generator)
            else:  # fifo: the ring pointer is the oldest slot
                slot = bk.fifo_ptr
                bk.fifo_ptr = (slot + 1) % self.z
            self.num_replaced += 1
        self._write(bk, slot, error)
        self.num_inserted += 1
        return True

    def add_batch(self, buckets: Tensor, errors: Tensor, generator: torch.Generator | None = None) -> int:
        """buckets (B,) long, errors (B, *entry_shape); returns the number stored."""
        if buckets.dim() != 1 or errors.shape[0] != buckets.shape[0]:
            raise ValueError(f"buckets must be (B,) and errors (B, ...); got {tuple(buckets.shape)} "
                             f"and {tuple(errors.shape)}")
        return sum(self.add(b, errors[i], generator) for i, b in enumerate(buckets.tolist()))

    # ------------------------------------------------------------------ sampling
    def sample(self, bucket: int, generator: torch.Generator | None = None) -> Tensor:
        """A uniformly random stored entry of `bucket`, as a new float32 tensor on the storage device."""
        bk = self._buckets[self._check_bucket(bucket)]
        if bk.count == 0:
            raise RuntimeError(f"cannot sample from empty bucket {bucket}")
        return self._read(bk, _randint(bk.count, generator))

    def sample_any(self, generator: torch.Generator | None = None, buckets=None) -> Tensor:
        """Uniform over all stored entries (a full bucket is proportionally more likely than a sparse one),
        or over the entries of `buckets` (bucket indices) only."""
        pool = self._buckets if buckets is None else [self._buckets[self._check_bucket(int(b))] for b in buckets]
        total = sum(bk.count for bk in pool)
        if total == 0:
            raise RuntimeError("cannot sample from an empty error bank" if buckets is None
                               else "cannot sample: the allowed buckets of the error bank are empty")
        idx = _randint(total, generator)
        for bk in pool:
            if idx < bk.count:
                return self._read(bk, idx)
            idx -= bk.count
        raise AssertionError("sample index beyond the stored entries")  # unreachable

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Config, counters and the stored entries as each bucket holds them (its chunks, not copied).

        The entries are not concatenated: at paper size that would be a transient copy of the whole
        bank (~100 GiB) at every checkpoint. A bucket's last chunk may hold a few unused rows.
        """
        def meta(get) -> Tensor:  # small per-entry rows, (sum count, ...) float32
            filled = [b for b in self._buckets if b.count > 0]
            return torch.cat([get(b)[: b.count].cpu() for b in filled]) if filled else torch.empty(0)

        sd = {"num_buckets": self.num_buckets, "capacity": self.capacity, "replacement": self.replacement,
              "dtype": _dtype_name(self.dtype), "has_shape": self.entry_shape is not None,
              "entry_shape": torch.tensor(self.entry_shape or (), dtype=torch.long),
              "effective_capacity": self.z,
              "counts": self.counts,
              "fifo_ptr": torch.tensor([b.fifo_ptr for b in self._buckets], dtype=torch.long),
              "chunks": [list(b.chunks) for b in self._buckets],  # per bucket: (rows, *entry_shape) each
              "num_inserted": self.num_inserted, "num_replaced": self.num_replaced,
              "num_nonfinite": self.num_nonfinite}
        if self._uses_norms:
            sd["norms"] = meta(lambda b: b.norms)  # (sum count,) float32
        if self.quantized:
            sd["scales"] = meta(lambda b: b.scales)  # (sum count,) float32
        if self.replacement == "l2_sketch":
            sd["sketches"] = meta(lambda b: b.sketches) if len(self) else torch.empty(0, self.sketch_dim)
            sd["sketch_dim"], sd["sketch_seed"] = self.sketch_dim, self.sketch_seed
        return sd

    @staticmethod
    def stored_rows(sd: dict) -> list[list[Tensor]]:
        """Per bucket of a bank's state dict, its stored entries in slot order (views of the saved chunks)."""
        counts = [int(c) for c in sd["counts"].tolist()]
        if "entries" in sd:  # the earlier layout: every entry concatenated in bucket order
            parts = torch.split(sd["entries"], counts) if sum(counts) else [sd["entries"][:0]] * len(counts)
            return [list(p) for p in parts]
        return [[row for chunk in chunks for row in chunk][:n] for chunks, n in zip(sd["chunks"], counts)]

    def load_state_dict(self, sd: dict) -> None:
        for key in ("num_buckets", "capacity", "replacement"):
            if sd[key] != getattr(self, key):
                raise ValueError(f"state_dict {key}={sd[key]!r} does not match this bank's "
                                 f"{getattr(self, key)!r}")
        counts = [int(c) for c in sd["counts"].tolist()]
        if len(counts) != self.num_buckets:
            raise ValueError("state_dict counts do not match this bank's buckets")
        stored = self.stored_rows(sd)
        if any(len(rows) != n for rows, n in zip(stored, counts)):
            raise ValueError("state_dict counts do not match its stored entries")
        self._reset()
        if not sd["has_shape"]:
            return self._load_counters(sd)
        self._resolve(tuple(int(s) for s in sd["entry_shape"].tolist()))
        if max(counts) > self.z:
            raise ValueError(f"the checkpoint holds {max(counts)} entries in a bucket but this memory's capacity "
                             f"is {self.z} (memory.budget_gib is lower than in the run that saved it)")
        # Stored norms / sketches are bit-exact only if the stored values are; otherwise recompute.
        same_dtype = sd["dtype"] == _dtype_name(self.dtype)
        same_sketch = (same_dtype and sd.get("sketch_dim") == self.sketch_dim
                       and sd.get("sketch_seed") == self.sketch_seed)
        offset = 0
        for bucket, (n, rows) in enumerate(zip(counts, stored)):
            if n == 0:
                continue
            bk = self._buckets[bucket]
            while bk.allocated < n:
                self._grow(bk)
            bk.count = n
            part = slice(offset, offset + n)
            offset += n
            if same_dtype:
                for i, row in enumerate(rows):
                    chunk, r = bk.locate(i)
                    chunk[r].copy_(row)
                if self.quantized:
                    bk.scales[:n] = sd["scales"][part]
                if self._uses_norms:
                    bk.norms[:n] = sd["norms"][part]
                if self.replacement == "l2_sketch" and same_sketch:
                    bk.sketches[:n] = sd["sketches"][part]
                elif self.replacement == "l2_sketch":
                    for i in range(n):
                        bk.sketches[i] = self._sketch(self._read(bk, i).reshape(-1))
            else:  # a different storage dtype: re-store each dequantised entry (norms, scales, sketches anew)
                for i, row in enumerate(rows):
                    value = row.float()
                    if sd["dtype"] == "float8":
                        value = value * sd["scales"][part][i]
                    self._write(bk, i, value)
        self._load_counters(sd)

    def _load_counters(self, sd: dict) -> None:
        for bk, p in zip(self._buckets, sd["fifo_ptr"].tolist()):
            bk.fifo_ptr = int(p) % self.z
        self.num_inserted, self.num_replaced = int(sd["num_inserted"]), int(sd["num_replaced"])
        self.num_nonfinite = int(sd["num_nonfinite"])


class ReplayMemory:
    """The two banks of ERFT: B_vid (video/latent-side errors) and B_noi (noise-side errors).

    `config.budget_gib` covers both banks (half each); `sketch_seed` seeds the count-sketch of l2_sketch.
    """

    def __init__(self, config: MemoryConfig | None = None, sketch_seed: int = 0):
        self.config = config = config or MemoryConfig()
        budget = None if config.budget_bytes is None else config.budget_bytes // 2
        self.vid = ErrorBank(config, budget, sketch_seed)
        self.noi = ErrorBank(config, budget, sketch_seed)

    def reader(self) -> "MemoryReader":
        """A read-only view for the training module (only the replay callback stores errors)."""
        return MemoryReader(self)

    def add(self, buckets: Tensor, e_vid: Tensor, e_noi: Tensor, keep: Tensor | None = None,
            generator: torch.Generator | None = None) -> int:
        """Store pair i in both banks at buckets[i] where keep[i]; returns the number of pairs stored.

        A pair is stored only if both of its errors are finite, so the banks stay in step; the
        non-finite side is counted in that bank's `num_nonfinite`.
        """
        B = buckets.shape[0]
        if buckets.dim() != 1 or e_vid.shape[0] != B or e_noi.shape[0] != B:
            raise ValueError(f"buckets must be (B,) with e_vid/e_noi (B, ...); got {tuple(buckets.shape)}, "
                             f"{tuple(e_vid.shape)}, {tuple(e_noi.shape)}")
        if keep is None:
            keep = torch.ones(B, dtype=torch.bool)
        if keep.shape != (B,):
            raise ValueError(f"keep must be (B,)={B}, got {tuple(keep.shape)}")
        self.vid.check_shape(e_vid.shape[1:])  # up front, so a bad batch cannot half-fill a pair
        self.noi.check_shape(e_noi.shape[1:])
        fin_vid = torch.isfinite(e_vid.detach().reshape(B, -1)).all(1).tolist()  # (B,)
        fin_noi = torch.isfinite(e_noi.detach().reshape(B, -1)).all(1).tolist()  # (B,)
        stored = 0
        for i, (b, k) in enumerate(zip(buckets.tolist(), keep.tolist())):
            if not k:
                continue
            if fin_vid[i] and fin_noi[i]:
                self.vid.add(b, e_vid[i], generator)
                self.noi.add(b, e_noi[i], generator)
                stored += 1
            else:
                self.vid.num_nonfinite += not fin_vid[i]
                self.noi.num_nonfinite += not fin_noi[i]
        return stored

    @property
    def nbytes(self) -> int:
        return self.vid.nbytes + self.noi.nbytes

    @property
    def effective_capacity(self) -> int | None:
        """Z per bucket after the budget (None until the first insert fixes the entry size)."""
        return self.vid.effective_capacity

    def state_dict(self) -> dict:
        return {"vid": self.vid.state_dict(), "noi": self.noi.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.vid.load_state_dict(sd["vid"])
        self.noi.load_state_dict(sd["noi"])


class MemoryReader:
    """What the training module may do with the replay memory: look at it and draw from it, never store.

    `bank` is "vid" (B_vid, the video-side errors E_vid) or "noi" (B_noi, the noise-side errors E_noi).
    """

    def __init__(self, memory: ReplayMemory):
        self._banks = {"vid": memory.vid, "noi": memory.noi}

    @property
    def num_buckets(self) -> int:
        return self._banks["vid"].num_buckets

    def nonempty(self, bank: str) -> Tensor:
        """(num_buckets,) bool: which buckets of `bank` hold at least one error."""
        return self._banks[bank].nonempty_mask

    def size(self, bank: str) -> int:
        return len(self._banks[bank])

    def sample(self, bank: str, bucket: int, generator: torch.Generator | None = None) -> Tensor:
        """A uniformly random error of `bucket`, float32 (*entry_shape)."""
        return self._banks[bank].sample(bucket, generator)

    def sample_any(self, bank: str, generator: torch.Generator | None = None, buckets=None) -> Tensor:
        """A uniformly random error over all stored ones (or over those of `buckets`), float32."""
        return self._banks[bank].sample_any(generator, buckets)
