"""Checks of every request the painting server gets: sample numbers, the JSON body of a paint
request (its shape, concept names, modes, unit ids, mask sizes and values). Each failure is
a RequestError with an HTTP status and a one-line message for the page."""
from __future__ import annotations

import json
import math
import re

import torch

from dissect_kernels.paint.edit import MODES, PaintEdit

MAX_BODY = 1 << 20            # bytes of a POST body
MAX_EDITS = 64                # strokes in one paint request
EDIT_KEYS = {"concept", "mode", "mask", "units"}


class RequestError(Exception):
    """A refused request: HTTP status and a message naming what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def bad(message: str) -> RequestError:
    return RequestError(400, message)


def parse_sample(value, max_sample: int, what: str = "seed", text: bool = False) -> int:
    """A sample index ("seed") in [0, max_sample]: a JSON integer (or, text=True, the decimal
    string of a query parameter)."""
    if text and isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,10}", value):
            raise bad(f"{what} must be a whole number in [0, {max_sample}], got {value[:40]!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= max_sample:
        raise bad(f"{what} must be a whole number in [0, {max_sample}], got {str(value)[:40]}")
    return value


def parse_query(query: dict[str, list[str]], allowed: set[str]) -> dict[str, str]:
    """Single-valued query parameters, all of them in `allowed`."""
    extra = sorted(set(query) - allowed)
    if extra:
        raise bad(f"unknown query parameter {extra[0][:40]!r}; allowed: {sorted(allowed)}")
    many = [k for k, v in query.items() if len(v) != 1]
    if many:
        raise bad(f"query parameter {many[0]!r} must be given once")
    return {k: v[0] for k, v in query.items()}


def parse_json_body(raw: bytes) -> dict:
    """The request body as a JSON object."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise bad(f"the body is not valid JSON ({str(err)[:80]})") from None
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def parse_mask(mask, grid: tuple[int, int], where: str) -> torch.Tensor:
    """A list of h rows of w numbers in [0, 1] (the layer's grid) -> float32 [h, w]."""
    h, w = grid
    if not isinstance(mask, list) or len(mask) != h:
        got = f"{len(mask)} rows" if isinstance(mask, list) else type(mask).__name__
        raise bad(f"{where}.mask must be a list of {h} rows of {w} numbers (the layer's grid), got {got}")
    for i, row in enumerate(mask):
        if not isinstance(row, list) or len(row) != w:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise bad(f"{where}.mask row {i} must hold {w} numbers, got {got}")
        for v in row:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                raise bad(f"{where}.mask values must be numbers in [0, 1], got {str(v)[:40]} in row {i}")
    return torch.tensor(mask, dtype=torch.float32)


def parse_units(units, num_units: int, unit_base: int, where: str) -> list[int]:
    """Unit numbers as the report shows them (from unit_base) -> layer indices."""
    lo, hi = unit_base, unit_base + num_units - 1
    if not isinstance(units, list) or not 1 <= len(units) <= num_units:
        raise bad(f"{where}.units must be a list of 1 to {num_units} unit numbers in [{lo}, {hi}]")
    for u in units:
        if isinstance(u, bool) or not isinstance(u, int) or not lo <= u <= hi:
            raise bad(f"{where}.units holds {str(u)[:40]}, not a unit number in [{lo}, {hi}]")
    return sorted({u - unit_base for u in units})


def parse_edit(edit, painter, where: str) -> PaintEdit:
    """One stroke {concept, mode, mask[, units]}: units default to the concept's (a stroke
    with units may omit the concept)."""
    if not isinstance(edit, dict):
        raise bad(f"{where} must be an object with concept, mode and mask")
    extra = sorted(set(edit) - EDIT_KEYS)
    if extra:
        raise bad(f"{where} has an unknown field {extra[0][:40]!r}; allowed: {sorted(EDIT_KEYS)}")
    missing = [k for k in ("mode", "mask") if k not in edit]
    if missing or not ({"concept", "units"} & set(edit)):
        raise bad(f"{where} lacks {(missing or ['concept'])[0]!r}")
    concept, mode = edit.get("concept"), edit["mode"]
    if "concept" in edit and (not isinstance(concept, str) or concept not in painter.concepts):
        raise bad(f"{where}.concept {str(concept)[:60]!r} is not a concept of this run; "
                  f"concepts: {sorted(painter.concepts)}")
    if mode not in MODES:
        raise bad(f"{where}.mode must be one of {list(MODES)}, got {str(mode)[:40]!r}")
    units = parse_units(edit["units"], painter.num_units, painter.unit_base, where) if "units" in edit \
        else painter.concepts[concept].units
    return PaintEdit(units, parse_mask(edit["mask"], painter.grid, where), mode)


def parse_paint(body: dict, painter, max_sample: int) -> tuple[int, list[PaintEdit]]:
    """{seed, edits: [stroke, ...]} or {seed, concept, mode, mask[, units]} -> (seed, edits)."""
    if "seed" not in body:
        raise bad("the body lacks 'seed' (the sample number)")
    seed = parse_sample(body["seed"], max_sample)
    if "edits" in body:
        extra = sorted(set(body) - {"seed", "edits"})
        if extra:
            raise bad(f"unknown field {extra[0][:40]!r} beside 'edits'")
        edits = body["edits"]
        if not isinstance(edits, list) or len(edits) > MAX_EDITS:
            raise bad(f"edits must be a list of at most {MAX_EDITS} strokes")
        return seed, [parse_edit(e, painter, f"edits[{i}]") for i, e in enumerate(edits)]
    return seed, [parse_edit({k: v for k, v in body.items() if k != "seed"}, painter, "body")]
