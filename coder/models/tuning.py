"""Partial tuning (the paper's Table A.4: LM head, first or last layer, BitFit) and gradient
checkpointing: which parameters of a masked LM train, found by the BERT / RoBERTa / Longformer layout."""

from __future__ import annotations

from torch import nn

from coder.config import TRAIN_MODES
from kept.errors import KeptError

__all__ = ["base_encoder", "encoder_layers", "lm_head_module", "set_trainable", "enable_checkpointing"]


def base_encoder(model: nn.Module) -> nn.Module:
    """The transformer inside a task model (`bert`, `roberta`, `longformer`...), or the model itself."""
    return getattr(model, model.base_model_prefix, model) if hasattr(model, "base_model_prefix") else model


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers: `encoder.layer` in the BERT, RoBERTa and Longformer families."""
    enc = base_encoder(model)
    layers = getattr(getattr(enc, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise KeptError(
            f"partial tuning knows the BERT, RoBERTa and Longformer layer layout (encoder.layer.N); "
            f"{type(enc).__name__} has none: use --train all")
    return layers


def lm_head_module(model: nn.Module) -> nn.Module:
    """The MLM head: `lm_head` (RoBERTa, Longformer) or `cls` (BERT)."""
    for name in ("lm_head", "cls"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise KeptError(f"{type(model).__name__}: no MLM head found (expected `lm_head` or `cls`)")


def set_trainable(model: nn.Module, mode: str, head: nn.Module | None = None) -> int:
    """Freeze all but the parts named by `mode`; returns the number of trainable parameters.

    `lm-head`: the MLM head only. `first-layer` / `last-layer`: that encoder layer and the MLM head
    (the paper tunes "LM head and first/last encoder layer"). `bitfit`: every bias and the MLM head.
    The MLM head trains its transform and bias but not the decoder tied to the input embeddings
    (that would train the whole vocabulary). `head` (the label-attention head) replaces the MLM
    head and is always trainable: its parameters are new.
    """
    if mode not in TRAIN_MODES:
        raise KeptError(f"unknown --train mode {mode!r}; choose one of {', '.join(TRAIN_MODES)}")
    for name, p in model.named_parameters():
        p.requires_grad = mode == "all" or (mode == "bitfit" and name.endswith("bias"))
    if mode in ("first-layer", "last-layer"):
        layer = encoder_layers(model)[0 if mode == "first-layer" else -1]
        for p in layer.parameters():
            p.requires_grad = True
    if mode != "all" and head is None:
        tied = {id(model.get_input_embeddings().weight)}
        for p in lm_head_module(model).parameters():
            p.requires_grad = id(p) not in tied
    if head is not None:
        for p in head.parameters():
            p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def enable_checkpointing(model: nn.Module) -> bool:
    """Gradient checkpointing where it saves memory, at no extra cost elsewhere; returns whether on.

    Off when no encoder layer trains (lm-head): nothing below the head keeps activations then.
    Non-reentrant, and without the input-embedding grad hook transformers adds: that hook makes
    the frozen layers below a trained one join the backward pass (2.7-3.3x the FLOPs measured
    for lm-head / last-layer), and reentrant checkpointing would fail without it (4.x)."""
    try:
        layers = encoder_layers(model)
    except KeptError:
        layers = model
    if not any(p.requires_grad for p in layers.parameters()):
        return False
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2 (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()
    return True
