"""Segmenter adapters: what GAN dissection, ACE, insertion context, artifact units and the
generated-vs-real statistics call to label images. A segmenter is any object with an integer
`num_classes` (class 0 = background / unlabelled) whose call maps images [B, 3, H, W] in the
generator's range [-1, 1] to int class ids [B, H, W] or label layers [B, L, H, W] (several
labels per pixel, 0 = none); optional `concept_names`, `category_names`, `category_of`.
The shipped tiny generator's PaletteSegmenter is one as it is; TorchSegmenter wraps a user's
torch segmentation network (logits, ids or multi-label scores), hf_segmenter a Hugging Face
`transformers` semantic-segmentation model from a local folder (the optional `hf` extra)."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

OUTPUTS = ("logits", "ids", "multilabel")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BACKGROUND_NAMES = ("background", "unlabeled", "unlabelled", "other", "void")


@runtime_checkable
class Segmenter(Protocol):
    """images [B, 3, H, W] in [-1, 1] -> int64 ids [B, H, W] or [B, L, H, W]; class 0 = none."""

    num_classes: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def masks_to_layers(masks: torch.Tensor) -> torch.Tensor:
    """Multi-label masks [B, C, H, W] (bool; channel c = class c, channel 0 ignored) -> label
    layers [B, L, H, W] int64, L = the most labels any pixel holds (at least 1), 0 = none."""
    if masks.dim() != 4:
        raise ValueError(f"multi-label masks must have shape [B, C, H, W], got {tuple(masks.shape)}")
    ids = masks.bool().long() * torch.arange(masks.shape[1], device=masks.device)[None, :, None, None]
    ids[:, 0] = 0
    depth = max(1, int((ids > 0).sum(1).max())) if ids.numel() else 1
    return ids.topk(depth, dim=1).values


def _class_map(names: Sequence[str], background) -> tuple[list[str], torch.Tensor]:
    """(our class names, lut: model class -> our id): the model's background class (an index, a
    name, "auto": the first of BACKGROUND_NAMES found, None: there is none) becomes id 0, the
    others follow in order; with none, id 0 is a class the model never outputs."""
    names = [str(n) for n in names]
    if background == "auto":
        background = next((i for i, n in enumerate(names) if n.lower() in BACKGROUND_NAMES), None)
    elif isinstance(background, str):
        if background not in names:
            raise ValueError(f"background {background!r} is not one of the segmenter's classes {names[:20]}")
        background = names.index(background)
    if background is not None and not (isinstance(background, int) and 0 <= background < len(names)):
        raise ValueError(f"background must be a class index in [0, {len(names)}), a name, 'auto' or "
                         f"None, got {background!r}")
    lut = torch.zeros(len(names), dtype=torch.int64)
    ours = [names[background] if background is not None else "background"]
    for i, n in enumerate(names):
        if i != background:
            lut[i] = len(ours)
            ours.append(n)
    return ours, lut


class TorchSegmenter:
    """A torch segmentation network as a segmenter. `model(x)` returns logits / scores
    [B, C, h, w] (a tensor, a dict with "out" or "logits", or an object with .logits) or ids
    [B, h, w] (output="ids"); x = the images mapped from input_range to [0, 1], normalised by
    mean/std and resized to `size` (H, W) when given. Logits are resized to the image and
    argmaxed; output="multilabel" keeps every class whose sigmoid(score) > threshold (label
    layers). `names` are the model's classes; `background` (index, name, "auto" or None) says
    which one is class 0 (see _class_map)."""

    def __init__(self, model, names: Sequence[str], *, output: str = "logits", background="auto",
                 input_range=(-1.0, 1.0), mean=None, std=None, size=None, threshold: float = 0.5,
                 category_names=None, category_of=None):
        if not callable(model):
            raise TypeError(f"model must be callable (a torch module), got {type(model).__name__}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if len(names) < 1:
            raise ValueError("names must list the model's classes")
        self.model, self.output, self.threshold = model, output, float(threshold)
        self.concept_names, self.lut = _class_map(names, background)
        self.num_classes = len(self.concept_names)
        self.input_range = tuple(float(v) for v in input_range)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        if category_names is not None:
            self.category_names, self.category_of = list(category_names), category_of

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input: images mapped to [0, 1], normalised, resized."""
        lo, hi = self.input_range
        x = (images.float() - lo) / (hi - lo)
        if self.mean is not None:
            x = x - self.mean.to(x.device)
        if self.std is not None:
            x = x / self.std.to(x.device)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The network's raw output at the image's size: [B, C, H, W] (or ids [B, H, W])."""
        with torch.no_grad():
            out = self.model(self.prepare(images))
        if isinstance(out, dict):
            out = out.get("out", out.get("logits"))
        out = getattr(out, "logits", out)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the segmentation model returned {type(out).__name__}, not a tensor of "
                            "logits (or a dict with 'out' / an object with .logits)")
        H, W = images.shape[-2:]
        want = 3 if self.output == "ids" else 4
        if out.dim() != want or out.shape[0] != images.shape[0] or \
                (want == 4 and out.shape[1] != len(self.lut)):
            raise ValueError(f"the segmentation model returned shape {tuple(out.shape)}; expected "
                             + ("[B, h, w] class ids" if want == 3 else f"[B, {len(self.lut)}, h, w] scores"))
        if want == 4 and tuple(out.shape[-2:]) != (H, W):
            out = F.interpolate(out.float(), size=(H, W), mode="bilinear", align_corners=False)
        elif want == 3 and tuple(out.shape[-2:]) != (H, W):
            out = F.interpolate(out[:, None].float(), size=(H, W), mode="nearest")[:, 0].long()
        return out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.scores(images)
        lut = self.lut.to(out.device)
        if self.output == "ids":
            if out.dtype.is_floating_point or int(out.min()) < 0 or int(out.max()) >= len(lut):
                raise ValueError(f"the segmentation model must return int ids in [0, {len(lut)})")
            return lut[out.long()]
        if self.output == "logits":
            return lut[out.argmax(1)]
        on = torch.sigmoid(out.float()) > self.threshold                       # [B, C_model, H, W]
        masks = torch.zeros((out.shape[0], self.num_classes) + tuple(out.shape[2:]), dtype=torch.bool,
                            device=out.device)
        masks.index_copy_(1, lut, on)
        return masks_to_layers(masks)


def hf_segmenter(path, *, background="auto", device=None) -> TorchSegmenter:
    """A Hugging Face `transformers` semantic-segmentation model (e.g. SegFormer) from a local
    folder (config.json, weights, preprocessor_config.json; nothing is downloaded), as a
    TorchSegmenter: classes from config.id2label, mean/std/size from the image processor
    (ImageNet mean/std and the image's own size when the folder has none)."""
    try:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
    except ImportError as err:
        raise ImportError("hf_segmenter needs the `transformers` package: pip install "
                          "'dissect-kernels[hf]'") from err
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a local transformers semantic-segmentation model ({err})") from err
    model = model.eval().to(device) if device is not None else model.eval()
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, None
    try:
        proc = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        mean, std = getattr(proc, "image_mean", None) or mean, getattr(proc, "image_std", None) or std
        s = getattr(proc, "size", None) or {}
        size = (s["height"], s["width"]) if "height" in s and "width" in s else None
    except (OSError, ValueError):
        pass
    id2label = model.config.id2label
    names = [id2label[i] for i in sorted(id2label)]
    return TorchSegmenter(lambda x: model(pixel_values=x), names, background=background, mean=mean,
                          std=std, size=size)


def check_segmenter(segmenter) -> None:
    """Refuse, in one line, an object that is not a segmenter (before any sample is drawn)."""
    if not isinstance(segmenter, Segmenter):
        raise TypeError(f"segmenter must be callable with an integer num_classes (see "
                        f"dissect_kernels.segmenters; wrap a torch network in TorchSegmenter), "
                        f"got {type(segmenter).__name__}")


__all__ = ["Segmenter", "TorchSegmenter", "hf_segmenter", "masks_to_layers", "check_segmenter"]
