"""Error replay memory of ERFT: the model's own one-step errors, bucketed by timestep.

Error-Recycling Fine-Tuning stores the errors the model makes during training (latent-shaped
tensors, e.g. (16, T, h, w)) in buckets indexed by the timestep-grid index n, and later injects
samples of them into clean training inputs so the model learns to correct its own drift.

Storage is preallocated per bucket, (capacity, *entry_shape), and allocated lazily on the first
insert into a bucket, so an insert costs O(D) (plus O(Z*D) reads for the "l2" policy) instead of
re-stacking the whole bucket on every step.
"""
from __future__ import annotations

import torch
from torch import Tensor

REPLACEMENTS = ("l2", "random", "fifo")


def _randint(high: int, generator: torch.Generator | None) -> int:
    """One uniform draw from [0, high), on the generator's device so a CUDA generator works too."""
    device = generator.device if generator is not None else None
    return int(torch.randint(high, (1,), generator=generator, device=device).item())


class ErrorBank:
    """Errors bucketed by timestep grid; fixed capacity Z per bucket; preallocated storage."""

    chunk_size = 32  # entries per float32 dot-product chunk in the "l2" search (bounds upcast memory)

    def __init__(self, num_buckets: int = 50, capacity: int = 500, replacement: str = "l2",
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        if replacement not in REPLACEMENTS:
            raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {replacement!r}")
        if num_buckets < 1 or capacity < 1:
            raise ValueError(f"num_buckets and capacity must be >= 1, got {num_buckets}, {capacity}")
        self.num_buckets, self.capacity, self.replacement = int(num_buckets), int(capacity), replacement
        self.dtype, self.device = dtype, torch.device(device)
        self._reset()

    def _reset(self) -> None:
        self.entry_shape: tuple[int, ...] | None = None
        self._store: list[Tensor | None] = [None] * self.num_buckets  # each (Z, *entry_shape)
        self._norms: list[Tensor | None] = [None] * self.num_buckets  # each (Z,) float32, "l2" only
        self._counts = [0] * self.num_buckets
        self._fifo_ptr = [0] * self.num_buckets  # oldest slot once a bucket is full
        self.num_inserted = self.num_replaced = self.num_nonfinite = 0

    # ------------------------------------------------------------------ inspection
    def _check_bucket(self, bucket: int) -> int:
        bucket = int(bucket)
        if not 0 <= bucket < self.num_buckets:
            raise IndexError(f"bucket {bucket} out of range [0, {self.num_buckets})")
        return bucket

    @property
    def counts(self) -> Tensor:
        return torch.tensor(self._counts, dtype=torch.long)  # (num_buckets,)

    def __len__(self) -> int:
        return sum(self._counts)

    def is_empty(self, bucket: int) -> bool:
        return self._counts[self._check_bucket(bucket)] == 0

    @property
    def nonempty_mask(self) -> Tensor:
        return self.counts > 0  # (num_buckets,) bool

    @property
    def fill_fraction(self) -> float:
        return len(self) / (self.num_buckets * self.capacity)

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self._store if s is not None)

    def entries(self, bucket: int) -> Tensor:
        """View of the filled part of a bucket, (count, *entry_shape)."""
        bucket = self._check_bucket(bucket)
        store = self._store[bucket]
        if store is None:
            return torch.empty((0, *(self.entry_shape or ())), dtype=self.dtype, device=self.device)
        return store[: self._counts[bucket]]

    # ------------------------------------------------------------------ insertion
    def check_shape(self, shape: tuple[int, ...] | torch.Size) -> None:
        """The first insert fixes the entry shape; mixing shapes would make buckets unsampleable."""
        if self.entry_shape is not None and tuple(shape) != self.entry_shape:
            raise ValueError(f"error shape {tuple(shape)} does not match the bank's entry shape "
                             f"{self.entry_shape}")

    def _nearest_slot(self, bucket: int, error: Tensor) -> int:
        """Exact nearest stored entry in L2, via ||a||^2 + ||b||^2 - 2 a.b with cached norms.

        Dot products are taken in float32 over chunks of entries so a bf16 bucket is never upcast
        as a whole (at paper scale one bucket is Z * 20M elements).
        """
        store, norms = self._store[bucket], self._norms[bucket]
        assert store is not None and norms is not None
        e = error.reshape(-1).to(device=self.device, dtype=torch.float32)  # (D,)
        dots = torch.empty(self.capacity, dtype=torch.float32, device=self.device)  # (Z,)
        for i in range(0, self.capacity, self.chunk_size):
            block = store[i : i + self.chunk_size].reshape(-1, e.numel()).float()  # (k, D)
            dots[i : i + block.shape[0]] = block @ e
        dist = norms + e.dot(e) - 2.0 * dots  # (Z,)
        return int(torch.argmin(dist).item())

    def add(self, bucket: int, error: Tensor, generator: torch.Generator | None = None) -> bool:
        """Store a copy of `error` in `bucket`; returns False (and counts it) if it is non-finite."""
        bucket = self._check_bucket(bucket)
        error = error.detach()
        self.check_shape(error.shape)
        if not bool(torch.isfinite(error).all()):
            self.num_nonfinite += 1  # a diverged step must not poison the memory
            return False
        if self.entry_shape is None:
            self.entry_shape = tuple(error.shape)
        if self._store[bucket] is None:
            self._store[bucket] = torch.empty((self.capacity, *self.entry_shape), dtype=self.dtype,
                                              device=self.device)
            if self.replacement == "l2":
                self._norms[bucket] = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        store, n = self._store[bucket], self._counts[bucket]
        if n < self.capacity:
            slot = n
            self._counts[bucket] = n + 1
        else:
            if self.replacement == "l2":
                slot = self._nearest_slot(bucket, error)
            elif self.replacement == "random":
                slot = _randint(self.capacity, generator)
            else:  # fifo: the ring pointer is the oldest slot
                slot = self._fifo_ptr[bucket]
                self._fifo_ptr[bucket] = (slot + 1) % self.capacity
            self.num_replaced += 1
        store[slot].copy_(error)  # converts dtype/device in place, no bucket-sized allocation
        if self.replacement == "l2":
            flat = store[slot].reshape(-1).float()  # norm of the stored (rounded) value: exact distances
            self._norms[bucket][slot] = flat.dot(flat)
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
        """A uniformly random stored entry of `bucket`, as a new float32 tensor."""
        bucket = self._check_bucket(bucket)
        n = self._counts[bucket]
        if n == 0:
            raise RuntimeError(f"cannot sample from empty bucket {bucket}")
        return self._store[bucket][_randint(n, generator)].to(torch.float32, copy=True)

    def sample_any(self, generator: torch.Generator | None = None) -> Tensor:
        """Uniform over all stored entries (a full bucket is proportionally more likely than a sparse one)."""
        total = len(self)
        if total == 0:
            raise RuntimeError("cannot sample from an empty error bank")
        idx = _randint(total, generator)
        for bucket, n in enumerate(self._counts):
            if idx < n:
                return self._store[bucket][idx].to(torch.float32, copy=True)
            idx -= n
        raise AssertionError("sample index beyond the stored entries")  # unreachable

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Config, counters and only the filled part of each bucket (concatenated in bucket order)."""
        filled = [self._store[b][:n].cpu() for b, n in enumerate(self._counts) if n > 0]
        sd = {"num_buckets": self.num_buckets, "capacity": self.capacity, "replacement": self.replacement,
              "dtype": str(self.dtype).removeprefix("torch."),
              "has_shape": self.entry_shape is not None,
              "entry_shape": torch.tensor(self.entry_shape or (), dtype=torch.long),
              "counts": self.counts, "fifo_ptr": torch.tensor(self._fifo_ptr, dtype=torch.long),
              "entries": torch.cat(filled) if filled else torch.empty(0, dtype=self.dtype),  # (sum n, ...)
              "num_inserted": self.num_inserted, "num_replaced": self.num_replaced,
              "num_nonfinite": self.num_nonfinite}
        if self.replacement == "l2":
            norms = [self._norms[b][:n].cpu() for b, n in enumerate(self._counts) if n > 0]
            sd["norms"] = torch.cat(norms) if norms else torch.empty(0)  # (sum n,) float32
        return sd

    def load_state_dict(self, sd: dict) -> None:
        for key in ("num_buckets", "capacity", "replacement"):
            if sd[key] != getattr(self, key):
                raise ValueError(f"state_dict {key}={sd[key]!r} does not match this bank's "
                                 f"{getattr(self, key)!r}")
        counts = [int(c) for c in sd["counts"].tolist()]
        entries = sd["entries"]
        if len(counts) != self.num_buckets or sum(counts) != entries.shape[0]:
            raise ValueError("state_dict counts do not match its stored entries")
        self._reset()
        if sd["has_shape"]:
            self.entry_shape = tuple(int(s) for s in sd["entry_shape"].tolist())
        # Stored norms are bit-exact only if the storage dtype is unchanged; otherwise recompute.
        keep_norms = self.replacement == "l2" and sd["dtype"] == str(self.dtype).removeprefix("torch.")
        offset = 0
        for bucket, n in enumerate(counts):
            if n == 0:
                continue
            store = torch.empty((self.capacity, *self.entry_shape), dtype=self.dtype, device=self.device)
            store[:n].copy_(entries[offset : offset + n])
            self._store[bucket] = store
            if self.replacement == "l2":
                norms = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
                if keep_norms:
                    norms[:n].copy_(sd["norms"][offset : offset + n])
                else:
                    flat = store[:n].reshape(n, -1).float()  # (n, D)
                    norms[:n] = (flat * flat).sum(1)
                self._norms[bucket] = norms
            offset += n
        self._counts = counts
        self._fifo_ptr = [int(p) for p in sd["fifo_ptr"].tolist()]
        self.num_inserted, self.num_replaced = int(sd["num_inserted"]), int(sd["num_replaced"])
        self.num_nonfinite = int(sd["num_nonfinite"])


class ReplayMemory:
    """The two banks of ERFT: B_vid (video/latent-side errors) and B_noi (noise-side errors)."""

    def __init__(self, num_buckets: int = 50, capacity: int = 500, replacement: str = "l2",
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        kw = dict(num_buckets=num_buckets, capacity=capacity, replacement=replacement, dtype=dtype,
                  device=device)
        self.vid = ErrorBank(**kw)
        self.noi = ErrorBank(**kw)

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

    def state_dict(self) -> dict:
        return {"vid": self.vid.state_dict(), "noi": self.noi.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.vid.load_state_dict(sd["vid"])
        self.noi.load_state_dict(sd["noi"])
