"""IoUTally: the mergeable IoU accumulator. It sums exact int64 counts (intersection, truth,
activation per category, pixel totals) over batches and turns them into IoU, IQR, labels and
detector flags under each convention's union / epsilon / labelling rule.

Counts kept (all int64 on `device`):
  intersection [U, C]  Σ|A_u ∧ L_c|, per layer or any layer as the convention says;
  truth [C]            Σ|L_c| (per layer when `Convention.truth_layers`);
  activation [U, K]    the union's activation term for concepts of category k:
                       "category": Σ_b |A_u,b| · [image b has a label of category k]  (ND, GD, exact)
                       "touched":  Σ_b |A_u,b| · [an active pixel of u lies on category k] (NDL)
                       "all":      Σ_b |A_u,b| for every k                                (DB)
  active_total [U]     Σ_b |A_u,b|;
  category_pixels [K]  H·W summed over the images where category k is present (GD's tot[k]);
  total_pixels, images.

Readings chosen where REFERENCE-CONVENTIONS leaves room:
- gandissect's truth G is per layer: its `label_counts` is a bincount over every channel of the
  segmentation, while its intersection uses "any channel = c" (Convention.truth_per_layer).
- gandissect also marks label 0's category present in every image with an unlabelled pixel
  (label 0 is in its per-image bincount). That quirk is not reproduced: concept 0 never counts.
- dissect (DB) computes IoU from probabilities P(A)=A/N, P(C)=G/N, P(A∧C)=I/N in float64 from
  exact counts (DB keeps float32 running means; we do not reproduce their rounding). 0/0 -> 0.
  Column 0 of iou() is condition 0 ("all pixels"), whose IoU is P(A); it competes in best().
  For the other conventions column 0 is 0 and never wins.
- exact: I / (A + G - I) with no epsilon; 0/0 -> 0.
- iqr() uses the convention's activation term as GD's cc and tot = category_pixels[cat(c)]
  (total_pixels for the "all" union); column 0 is 0. Terms follow GD: each p·ln(·) NaN -> 0,
  MI and JE clamped >= 0, IQR NaN -> 0.
- best() ties: lowest concept id (global rule); per-category rule: lowest concept id inside a
  category, and the first (exact) or last (ND/NDL: Convention.category_ties) category among
  equal bests. A unit with no positive IoU (dead or constant units among them) gets no label
  (-1), never a made-up concept: IoU 0, or NaN under dead_units="nan" (DB) where its row holds
  0/0 (iou() then keeps those NaNs).
- dissect: detectors() applies "best IoU > 0.04" to whatever wins best(), condition 0 included.
- Thresholds are compared per Convention.threshold_compare / threshold_dtype (strict_thresholds).
- stale_category_flag (NDL's bug, off by default): on an image without pixel labels a firing
  unit's union reuses the category flags of the last firing (image, unit) that had pixel
  labels, plus every image-level category seen since (stats/stale_flag.py). The flags carry
  from batch to batch in dataset order, so such a tally cannot be merged across ranks.
- Merging or loading compares sizes, category_of and the convention *name*.

Reference behaviour deliberately not reproduced (data-selection quirks, not scoring rules):
ND's cap of 2048 (count, unit, label) triples per image; GD's label-0 category presence
(above); DB's float32 means (its IoUs differ from these in the 7th digit).
"""
from __future__ import annotations

import torch

from dissect_kernels.conventions import Convention, get_convention
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops import _checks
from dissect_kernels.ops.label_stats import LabelStats, label_stats
from dissect_kernels.ops.tally import TallyResult, strict_thresholds, tally
from dissect_kernels.stats.stale_flag import stale_touched

_COUNTS = ("intersection", "truth", "activation", "active_total", "category_pixels",
           "total_pixels", "images")


class IoUTally:
    """Streaming IoU / IQR accumulator for U units and C concepts under one convention."""

    def __init__(self, num_units: int, num_concepts: int, category_of: torch.Tensor, *,
                 num_categories: int | None = None, convention: "str | Convention" = "exact",
                 device=None):
        for name, v in (("num_units", num_units), ("num_concepts", num_concepts)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        category_of = _checks.tensor("category_of", category_of, ndim=1, dtypes=_checks.INT_DTYPES)
        if category_of.shape[0] != num_concepts:
            raise ValueError(f"category_of has {category_of.shape[0]} entries, expected num_concepts={num_concepts}")
        K = int(num_categories) if num_categories is not None else int(category_of.max()) + 1
        if K < 1:
            raise ValueError(f"num_categories must be >= 1, got {K}")
        _checks.ids_in_range("category_of", category_of, K, "num_categories")
        self.convention = get_convention(convention)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.num_units, self.num_concepts, self.num_categories = num_units, num_concepts, K
        self.category_of = category_of.to(self.device, torch.int64).clone()
        U, C = num_units, num_concepts
        z = lambda *s: torch.zeros(*s, dtype=torch.int64, device=self.device)  # noqa: E731
        self.intersection, self.truth, self.activation = z(U, C), z(C), z(U, K)
        self.active_total, self.category_pixels = z(U), z(K)
        self.total_pixels, self.images = z(()), z(())
        self.stale_state = torch.zeros(K, dtype=torch.bool, device=self.device)  # stale_category_flag

    # ---- accumulation -------------------------------------------------------------------
    def update(self, acts: torch.Tensor, thresholds: torch.Tensor, labels: torch.Tensor,
               image_labels: torch.Tensor | None = None, *, geometry: "str | Geometry | None" = None,
               backend: str = "auto", stats: LabelStats | None = None) -> TallyResult:
        """Tally one batch (dk.tally + dk.label_stats with the convention's options) and add
        its counts. Returns the batch's TallyResult (per-image `active`/`max` for exemplars).
        `stats`: this batch's batch_stats(), when several layers share one batch of labels."""
        conv = self.convention
        if geometry is None:
            if conv.geometry == "receptive-field":
                raise ValueError(f"convention {conv.name!r} upsamples through the layer's receptive "
                                 "field: pass geometry=Geometry.receptive_field(offset, size, stride)")
            geometry = conv.geometry
        if not isinstance(acts, torch.Tensor) or acts.dim() != 4 or acts.shape[1] != self.num_units:
            shape = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise ValueError(f"acts must have shape [B, {self.num_units}, h, w] for this tally, got {shape}")
        cat = self.category_of.to(acts.device)
        touched = conv.union == "touched"
        thresholds = strict_thresholds(thresholds, conv.threshold_compare)
        result = tally(acts, thresholds, labels, num_concepts=self.num_concepts,
                       image_labels=image_labels, geometry=geometry, per_layer=conv.per_layer,
                       category_of=cat if touched else None,
                       num_categories=self.num_categories if touched else None, backend=backend)
        counted = result
        if touched and conv.stale_category_flag:
            flags, self.stale_state = stale_touched(result, thresholds, labels, image_labels, cat,
                                                    self.num_categories, self.stale_state)
            counted = TallyResult(result.intersection, result.active, result.max, flags)
        self.update_counts(counted, self.batch_stats(labels, image_labels) if stats is None else stats)
        return result

    def batch_stats(self, labels: torch.Tensor, image_labels: torch.Tensor | None = None) -> LabelStats:
        """dk.label_stats of a batch with this convention's options; it depends only on the
        labels, so tallies of several layers with the same convention can share it."""
        return label_stats(labels, image_labels, num_concepts=self.num_concepts,
                           category_of=self.category_of.to(labels.device),
                           num_categories=self.num_categories, per_layer=self.convention.truth_layers)

    def update_counts(self, result: TallyResult, stats: LabelStats) -> None:
        """Add one batch's tally and label statistics (computed with this convention's options)."""
        U, C, K = self.num_units, self.num_concepts, self.num_categories
        B = result.active.shape[0]
        expect = {"result.intersection": (result.intersection, (U, C)),
                  "result.active": (result.active, (B, U)),
                  "stats.pixels": (stats.pixels, (B, C)),
                  "stats.present": (stats.present, (B, K))}
        if self.convention.union == "touched":
            expect["result.touched"] = (result.touched, (B, U, K))
        for name, (t, shape) in expect.items():
            if t is None:
                raise ValueError(f"{name} is missing; convention {self.convention.name!r} needs it "
                                 "(pass category_of to tally/label_stats)")
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        dev = self.device
        active = result.active.to(dev, torch.int64)
        present = stats.present.to(dev)
        union = self.convention.union
        if union == "category":
            act = (active[:, :, None] * present[:, None, :]).sum(0)
        elif union == "touched":
            act = (active[:, :, None] * result.touched.to(dev, torch.int64)).sum(0)
        elif union == "all":
            act = active.sum(0)[:, None].expand(U, K)
        else:
            raise ValueError(f"unknown union rule {union!r} in convention {self.convention.name!r}")
        self.intersection += result.intersection.to(dev, torch.int64)
        self.truth += stats.pixels.to(dev, torch.int64).sum(0)
        self.activation += act
        self.active_total += active.sum(0)
        self.category_pixels += present.sum(0) * stats.image_pixels
        self.total_pixels += B * stats.image_pixels
        self.images += B

    # ---- scores -------------------------------------------------------------------------
    def _union_activation(self) -> torch.Tensor:
        """[U, C] the activation term of each concept's union (its category's column)."""
        return self.activation[:, self.category_of]

    def iou(self) -> torch.Tensor:
        """[U, C] float64 IoU under the convention (see the module docstring)."""
        conv = self.convention
        if conv.union == "all":
            I, G = self.intersection.double(), self.truth.double()[None, :]
            n = float(self.total_pixels)
            if n == 0:
                return torch.zeros_like(I)
            pa = self.active_total.double()[:, None] / n
            pc, pac = G / n, I / n
            out = pac / (pa + pc - pac)
            if conv.dead_units != "nan":
                out = _nan_to_zero(out)
            out[:, 0] = pa[:, 0]
            return out
        # in place on one [U, C] float64 buffer: integer sums are exact in float64 (< 2^53), so
        # this equals (A + G - I) in int64 cast once, with a fraction of the memory
        denom = self.activation.double()[:, self.category_of]          # [U, K] -> [U, C]
        denom += self.truth.double()[None, :]
        denom -= self.intersection
        if conv.epsilon:
            denom += conv.epsilon
        out = torch.div(self.intersection, denom, out=denom)
        return out if conv.dead_units == "nan" else out.masked_fill_(out.isnan(), 0.0)

    def iqr(self) -> torch.Tensor:
        """[U, C] float64 information-quality ratio MI/JE of the 2x2 table (GD's formula)."""
        I = self.intersection
        cc = self.active_total[:, None].expand_as(I) if self.convention.union == "all" \
            else self._union_activation()
        G = self.truth[None, :].expand_as(I)
        if self.convention.union == "all":
            tot = self.total_pixels.expand(self.num_concepts)
        else:
            tot = self.category_pixels[self.category_of]
        tot = tot[None, :].expand_as(I)
        union = cc + G - I
        table = torch.stack([torch.stack([I, cc - I]), torch.stack([G - I, tot - union])])
        p = table.double() / tot.double()
        out = iqr_from_table(p)
        out[:, 0] = 0
        return out

    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(label [U] int64, iou [U] float64): each unit's label under the convention's rule.
        A unit with no positive IoU (a dead or constant unit among them), or active on every
        pixel (possible with given thresholds or ">="; except where condition 0, "all pixels",
        competes), gets label -1 and IoU 0, or NaN under dead_units="nan" where its IoU row holds a 0/0 (as davidbau/dissect,
        whose IoU matrix ends at the highest concept present in the data)."""
        conv = self.convention
        scores = self.iou()
        U, C = scores.shape
        first = 0 if conv.background_competes else 1
        if C <= first:
            return (torch.full((U,), -1, dtype=torch.int64, device=scores.device),
                    torch.zeros(U, dtype=torch.float64, device=scores.device))
        if conv.label_rule == "per-category" and not conv.background_competes:
            label, value = _best_per_category(scores, self.category_of, self.num_categories,
                                              last_wins=conv.category_ties == "last")
        else:
            present = torch.nonzero(self.truth > 0).flatten()
            end = C if conv.dead_units != "nan" or present.numel() == 0 else int(present[-1]) + 1
            value, label = scores[:, first:max(end, first + 1)].max(dim=1)   # NaN propagates
            label = label + first
        everywhere = (self.active_total == self.total_pixels) & (self.active_total > 0)
        if conv.background_competes:                        # davidbau/dissect: condition 0 is "everywhere"
            everywhere = torch.zeros_like(everywhere)
        none = ~(value > 0) | everywhere.to(value.device)   # a unit on every pixel marks no region
        label = torch.where(none, torch.full_like(label, -1), label)
        keep_nan = conv.dead_units == "nan"
        value = torch.where(none & ~(keep_nan & value.isnan()), torch.zeros_like(value), value)
        return label, value

    def detectors(self) -> torch.Tensor:
        """bool [U]: units whose best label passes the convention's detector rule."""
        label, value = self.best()
        iqr = None
        if self.convention.detector_iqr is not None:
            iqr = self.iqr().gather(1, label.clamp(min=0)[:, None])[:, 0]
        return self.convention.is_detector(value, iqr) & (label >= 0)

    # ---- merge / state ------------------------------------------------------------------
    def _check_same(self, other_cfg: dict, what: str) -> None:
        mine = self._config()
        for key in ("num_units", "num_concepts", "num_categories", "convention"):
            if mine[key] != other_cfg[key]:
                raise ValueError(f"cannot {what}: {key} differs ({mine[key]!r} here, {other_cfg[key]!r} there)")
        if not torch.equal(self.category_of.cpu(), other_cfg["category_of"].cpu().long()):
            raise ValueError(f"cannot {what}: category_of differs")

    def _config(self) -> dict:
        return dict(num_units=self.num_units, num_concepts=self.num_concepts,
                    num_categories=self.num_categories, convention=self.convention.name,
                    category_of=self.category_of)

    def merge(self, other: "IoUTally") -> "IoUTally":
        """Add another shard's counts (same sizes, categories and convention). Returns self."""
        if not isinstance(other, IoUTally):
            raise TypeError(f"can only merge another IoUTally, got {type(other).__name__}")
        self._check_same(other._config(), "merge IoUTally")
        if self.convention.stale_category_flag and int(self.images) and int(other.images):
            raise ValueError("cannot merge IoUTally with stale_category_flag: NetDissect-Lite's stale "
                             "flag carries from image to image in dataset order; run one process")
        if int(other.images) and not int(self.images):
            self.stale_state = other.stale_state.to(self.device).clone()
        for key in _COUNTS:
            getattr(self, key).add_(getattr(other, key).to(self.device))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible): the counts plus the configuration."""
        state = {key: getattr(self, key).clone() for key in _COUNTS}
        state["category_of"] = self.category_of.clone()
        state["sizes"] = torch.tensor([self.num_units, self.num_concepts, self.num_categories])
        state["convention"] = torch.tensor(list(self.convention.name.encode()), dtype=torch.uint8)
        if self.convention.stale_category_flag:
            state["stale_state"] = self.stale_state.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore counts from state_dict(); a different configuration is a clear error."""
        missing = [k for k in _COUNTS + ("category_of", "sizes", "convention") if k not in state]
        if missing:
            raise ValueError(f"IoUTally state is missing {missing}")
        U, C, K = (int(v) for v in state["sizes"])
        cfg = dict(num_units=U, num_concepts=C, num_categories=K,
                   convention=bytes(state["convention"].tolist()).decode(),
                   category_of=state["category_of"])
        self._check_same(cfg, "load IoUTally state")
        for key in _COUNTS:
            target = getattr(self, key)
            if tuple(state[key].shape) != tuple(target.shape):
                raise ValueError(f"IoUTally state {key!r} has shape {tuple(state[key].shape)}, expected {tuple(target.shape)}")
            target.copy_(state[key])
        if "stale_state" in state:
            self.stale_state = state["stale_state"].to(self.device, torch.bool).clone()


def iqr_from_table(p: torch.Tensor) -> torch.Tensor:
    """p [2, 2, ...] joint probabilities -> MI / JE, GD's way: every p·log(·) term that is NaN
    (0·log 0, 0/0) counts 0, MI and JE are clamped >= 0, and a NaN ratio is 0."""
    mi = torch.zeros(p.shape[2:], dtype=torch.float64, device=p.device)
    je = torch.zeros_like(mi)
    for j in range(2):
        for k in range(2):
            joint = p[j, k]
            ind = p[j, :].sum(0) * p[:, k].sum(0)
            mi += _nan_to_zero(joint * (joint / ind).log())
            je += _nan_to_zero(joint * joint.log())
    return _nan_to_zero(mi.clamp(min=0) / (-je).clamp(min=0))


def _nan_to_zero(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(t), torch.zeros_like(t), t)


def _best_per_category(scores: torch.Tensor, category_of: torch.Tensor, K: int, last_wins: bool):
    """ND/NDL: best concept inside each category (the lowest concept id among equals), then
    the category with the highest best; equal bests go to the first category, or to the last
    with last_wins (ND/NDL). Returns (label, value); label -1 where no category has a concept."""
    U = scores.shape[0]
    value = torch.full((U,), float("-inf"), dtype=torch.float64, device=scores.device)
    label = torch.full((U,), -1, dtype=torch.int64, device=scores.device)
    ids = torch.arange(scores.shape[1], device=scores.device)
    for k in range(K):
        members = ids[(category_of == k) & (ids > 0)]
        if members.numel() == 0:
            continue
        v, i = scores[:, members].max(dim=1)
        better = v >= value if last_wins else v > value
        value = torch.where(better, v, value)
        label = torch.where(better, members[i], label)
    return label, value
