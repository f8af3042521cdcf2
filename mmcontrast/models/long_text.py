"""Long-CLIP's knowledge-preserved stretching of a text tower's position embeddings.

A CLIP text tower has a learned absolute position table of ``L`` rows (77 for CLIP); it
cannot read a token past position ``L - 1``. Long-CLIP keeps the first ``keep`` rows (20),
which the paper finds are well trained and carry most of what short captions need, and
linearly interpolates the remaining ``L - keep`` rows over ``new_length - keep`` positions::

    new[:keep] = old[:keep]
    new[keep:] = linear_interpolate(old[keep:], size=new_length - keep)

with ``new_length = keep + (L - keep) * ratio`` in the paper (ratio 4: 77 -> 248). Inputs
shorter than ``keep`` tokens see exactly the old embeddings, so the stretched model gives
them exactly its old outputs; longer inputs now fit and are fine-tuned on long captions.

Alignment: ``align_corners=True`` on the tail. Old tail row ``j`` (of ``T = L - keep``) sits
at new tail position ``j * (T' - 1) / (T - 1)``, so the first and the last old rows land
exactly on the first and last new rows (``new[keep] = old[keep]``, ``new[-1] = old[-1]``)
and every new row is a convex blend of two neighbouring old rows: nothing is extrapolated
and any ``new_length`` works, not only ``keep + T * integer``. Long-CLIP's own code instead
puts old row ``j`` at ``keep + ratio * j`` and extrapolates the last ``ratio - 1`` rows past
the old end; with ``align_corners=True`` the rows between differ from it by a fraction of a
position (ratio 4, 77 -> 248: a step of 227/56 = 4.05 instead of 4), which fine-tuning absorbs.

Paper: Zhang et al., "Long-CLIP: Unlocking the Long-Text Capability of CLIP", ECCV 2024,
https://arxiv.org/abs/2403.15378 (Sec. 3.1, knowledge-preserved stretching).

Example:
    >>> import torch
    >>> new = stretch_position_embeddings(torch.randn(77, 8), 248)
    >>> new.shape
    torch.Size([248, 8])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KEEP = 20  # Long-CLIP keeps CLIP's first 20 position embeddings


def _check(length: int, new_length: int, keep: int) -> None:
    if keep < 0 or keep >= length:
        raise ValueError(
            f"keep={keep} must be in [0, {length}) for a table of {length} positions: "
            f"keep fewer rows than the table has (Long-CLIP keeps 20 of 77)."
        )
    if new_length <= length:
        raise ValueError(
            f"new_length={new_length} must be longer than the current {length} positions: "
            f"stretching only lengthens the table (Long-CLIP: 20 + (77 - 20) * 4 = 248)."
        )


def stretch_position_embeddings(weight: Tensor, new_length: int, keep: int = KEEP) -> Tensor:
    """Keep the first ``keep`` rows of ``weight`` and stretch the rest to ``new_length`` rows.

    Args:
        weight: The position table, shape ``[L, D]``.
        new_length: Rows of the result, more than ``L``.
        keep: Leading rows copied unchanged, ``0 <= keep < L``.

    Returns:
        Shape ``[new_length, D]``, ``weight``'s dtype and device; the tail is linearly
        interpolated with ``align_corners=True`` (in float32 when ``weight`` is half).

    Raises:
        ValueError: ``weight`` is not 2-D, ``keep`` is not in ``[0, L)`` or
            ``new_length <= L``.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a [positions, width] table, got shape {tuple(weight.shape)}")
    length = weight.shape[0]
    _check(length, new_length, keep)
    tail = weight[keep:].detach()
    work = tail.float() if tail.dtype in (torch.float16, torch.bfloat16) else tail
    stretched = F.interpolate(
        work.T.unsqueeze(0), size=new_length - keep, mode="linear", align_corners=True
    )  # [1, D, new_length - keep]
    return torch.cat([weight[:keep].detach(), stretched[0].T.to(weight.dtype)])


def _hf_embeddings(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The embeddings module holding a transformers text model's absolute position table."""
    text = getattr(model, "text", None)  # open_clip's HFTextEncoder wraps the HF model
    roots = [model, getattr(model, "text_model", None), text, getattr(text, "transformer", None)]
    for root in roots:
        embeddings = getattr(root, "embeddings", None)
        for name in ("position_embedding", "position_embeddings"):  # CLIP, BERT-like
            if isinstance(getattr(embeddings, name, None), nn.Embedding):
                return embeddings, name  # type: ignore[return-value]
    return None


def _set_buffer(module: nn.Module, name: str, value: Tensor) -> None:
    persistent = name not in module._non_persistent_buffers_set
    module.register_buffer(name, value, persistent=persistent)


def _stretch_hf(
    model: nn.Module, embeddings: nn.Module, name: str, new_length: int, keep: int
) -> int:
    for root in (model, getattr(model, "text_model", None)):
        kind = getattr(getattr(root, "config", None), "position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(
                f"this model's position_embedding_type is {kind!r}: Long-CLIP stretching "
                f"needs an absolute learned position table."
            )
    old: nn.Embedding = getattr(embeddings, name)
    length = old.num_embeddings
    weight = stretch_position_embeddings(old.weight, new_length, keep)
    new = nn.Embedding(new_length, old.embedding_dim, padding_idx=old.padding_idx)
    new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
    new.weight.requires_grad_(old.weight.requires_grad)
    setattr(embeddings, name, new)
    device = weight.device
    if isinstance(getattr(embeddings, "position_ids", None), Tensor):
        _set_buffer(embeddings, "position_ids", torch.arange(new_length, device=device)[None])
    token_type_ids = getattr(embeddings, "token_type_ids", None)
    if isinstance(token_type_ids, Tensor):
        zeros = torch.zeros(1, new_length, dtype=token_type_ids.dtype, device=device)
        _set_buffer(embeddings, "token_type_ids", zeros)
    for root in (model, getattr(model, "text_model", None)):
        config: Any = getattr(root, "config", None)
        for cfg in (config, getattr(config, "text_config", None)):
            if cfg is not None and hasattr(cfg, "max_position_embeddings"):
                cfg.max_position_embeddings = new_length
    return length


def _causal_mask(length: int, like: Tensor) -> Tensor:
    """open_clip's additive causal mask (``build_causal_mask``): -inf above the diagonal."""
    mask = torch.full((length, length), float("-inf"), device=like.device)
    return mask.triu_(1).to(like.dtype)


def _stretch_open_clip(owner: nn.Module, model: nn.Module, new_length: int, keep: int) -> int:
    if getattr(owner, "cls_emb", None) is not None:
        raise ValueError(
            "this open_clip text tower appends a class token (CoCa's embed_cls): its last "
            "position belongs to that token; Long-CLIP stretching supports CLIP text towers."
        )
    old: nn.Parameter = owner.positional_embedding  # type: ignore[assignment]
    length = old.shape[0]
    weight = stretch_position_embeddings(old, new_length, keep)
    owner.positional_embedding = nn.Parameter(weight, requires_grad=old.requires_grad)
    mask = getattr(owner, "attn_mask", None)
    if isinstance(mask, Tensor):  # None for bidirectional towers
        _set_buffer(owner, "attn_mask", _causal_mask(new_length, mask))
    for module in (owner, model):
        if hasattr(module, "context_length"):
            module.context_length = new_length  # type: ignore[assignment]
    if hasattr(owner, "num_pos"):
        owner.num_pos = new_length  # type: ignore[assignment]
    return length


def stretch_text_positions(model: nn.Module, new_length: int, keep: int = KEEP) -> int:
    """Stretch a text model's absolute position table in place to ``new_length`` positions.

    Finds the table and replaces it, with what depends on it, by
    ``stretch_position_embeddings``:

    - transformers (``CLIPTextModel``, ``CLIPModel``'s ``text_model``, ``BertModel``-like,
      ``VisionTextDualEncoderModel``'s ``text_model``): ``embeddings.position_embedding``
      or ``embeddings.position_embeddings`` (a new ``nn.Embedding``), the ``position_ids``
      and ``token_type_ids`` buffers, and ``config.max_position_embeddings``.
    - open_clip ``CLIP`` (the table on the model) or ``CustomTextCLIP`` / ``TextTransformer``
      (on ``model.text``): ``positional_embedding`` (a new ``nn.Parameter``), the causal
      ``attn_mask`` rebuilt for the new length, ``context_length`` (and ``num_pos``).

    The new parameters keep ``requires_grad``; build the optimizer after calling this.
    The tokenizer must also be told the new length (``max_length`` / ``context_length``).

    Args:
        model: A transformers or open_clip text model, or a dual model holding one.
        new_length: Positions after stretching, more than the current number.
        keep: Leading positions copied unchanged (Long-CLIP: 20).

    Returns:
        The number of positions before stretching.

    Raises:
        ValueError: No absolute learned position table (rotary or relative positions),
            ``new_length`` not above the current length, or ``keep`` not below it.
    """
    found = _hf_embeddings(model)
    if found is not None:
        return _stretch_hf(model, *found, new_length=new_length, keep=keep)
    for owner in (model, getattr(model, "text", None)):
        if isinstance(getattr(owner, "positional_embedding", None), nn.Parameter):
            assert owner is not None
            return _stretch_open_clip(owner, model, new_length, keep)
    raise ValueError(
        f"{type(model).__name__} has no absolute learned text position table "
        f"(embeddings.position_embedding(s) or positional_embedding); Long-CLIP stretching "
        f"does not apply to rotary or relative position encodings."
    )


def current_text_positions(model: nn.Module) -> int | None:
    """How many positions a text model's absolute position table holds (None: no table)."""
    found = _hf_embeddings(model)
    if found is not None:
        return int(getattr(found[0], found[1]).weight.shape[0])
    for owner in (model, getattr(model, "text", None)):
        table = getattr(owner, "positional_embedding", None)
        if isinstance(table, nn.Parameter):
            return int(table.shape[0])
    return None


def stretch_settings(value: Any, where: str) -> tuple[int, int]:
    """``{length: N, keep: K}`` from a recipe as ``(N, K)`` (``keep`` default 20).

    Raises:
        ValueError: Not a mapping, unknown keys, or values that are not positive integers.
    """
    if not isinstance(value, dict):
        raise ValueError(
            f"{where} must be a mapping such as {{length: 248, keep: 20}}, got {value!r}"
        )
    unknown = sorted(set(value) - {"length", "keep"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; it takes length and keep")
    length, keep = value.get("length"), value.get("keep", KEEP)
    for name, number in (("length", length), ("keep", keep)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(
                f"{where}.{name} must be a non-negative integer, got {number!r} "
                "(e.g. {length: 248, keep: 20})"
            )
    assert isinstance(length, int) and isinstance(keep, int)
    return length, keep


def stretch_to(model: nn.Module, value: Any, where: str) -> int:
    """Stretch ``model``'s text positions as a recipe's ``stretch_positions`` says; returns
    the length. Idempotent: a table already that long (a run's tower rebuilt) is kept.

    Raises:
        ValueError: Bad settings, no position table, or a table already longer.
    """
    length, keep = stretch_settings(value, where)
    current = current_text_positions(model)
    if current != length:
        try:
            stretch_text_positions(model, length, keep)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return length
