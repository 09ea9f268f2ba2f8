"""Reading the training setup off a live model: which parameters learn, LoRA, checkpointing, attention.

Works on plain transformers models, PEFT models (LoRA, DoRA, QLoRA on 4-bit weights), and models wrapped by DDP,
FSDP or ``torch.compile``. Parameter facts come from the config, never from ``numel()``: under ZeRO-3 or FSDP a
rank holds a shard, and 4-bit weights are packed. Only the *names* of trainable parameters are read here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from meter.engine.count import PEFT_MOE_PARAM_TARGETS, TrainingSetup

_ADAPTER = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)\.[^.]+\.")


@dataclass(frozen=True)
class ObservedSetup:
    config: dict[str, Any]
    setup: TrainingSetup
    trainable: frozenset[str] | None  # exact graph names for full/freeze; None for LoRA (derived from targets)
    trainable_numel: int  # what the live model reports (packed/sharded sizes where they apply)
    quantized: bool
    notes: tuple[str, ...] = ()
    adapter: str | None = None  # the PEFT adapter being trained


def unwrap(model: Any) -> Any:
    """The model under DDP/FSDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner


def strip_wrappers(name: str) -> str:
    """A live module or parameter path without PEFT, DDP, FSDP and compile prefixes."""
    for prefix in ("base_model.model.", "_orig_mod.", "module."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace("._orig_mod.", ".").replace("._fsdp_wrapped_module.", ".")


def graph_name(name: str) -> str:
    """A live parameter name as meter.engine.graph names it."""
    name = _ADAPTER.sub(lambda m: f".{m.group(1)}.default.", strip_wrappers(name))
    name = re.sub(r"(\.base_layer)+\.", ".", name)  # peft keeps the wrapped layer's own weights under base_layer
    return re.sub(r"\.(modules_to_save|original_module)(\.[^.]+)?\.", ".", name)


def observe_model(model: Any) -> ObservedSetup:
    """The config and TrainingSetup of a live (possibly PEFT, wrapped, quantized) transformers model."""
    model = unwrap(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    # the live class decides the head (an LM head, or a reward model's score head), whatever the checkpoint said
    config["architectures"] = [type(base).__name__]
    notes: list[str] = []
    trainable, numel = set(), 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable.add(graph_name(name))
            numel += int(getattr(p, "ds_numel", 0) or p.numel())
    quantized = bool(
        getattr(base, "is_loaded_in_4bit", False)
        or getattr(base, "is_loaded_in_8bit", False)
        or config.get("quantization_config")
    )
    lora = _lora_layout(model, config.get("model_type", ""))
    extra: tuple[str, ...] = ()
    if lora is not None:
        method = "qlora" if quantized else "lora"
        r, targets, dropout, dora, adapter = lora
        # adapters follow from the targets; other trainable weights (modules_to_save) are named exactly
        extra = tuple(sorted(f"^{re.escape(n)}$" for n in trainable if not _is_adapter(n)))
    else:
        all_trainable = all(p.requires_grad for p in base.parameters())
        method = "full" if all_trainable and trainable else "freeze"
        r, targets, dropout, dora, adapter = 16, None, 0.0, False, None
    checkpointing, reentrant, every_n = _checkpointing(base)
    setup = TrainingSetup(
        method=method,
        lora_r=r,
        lora_targets=targets,
        lora_dropout=dropout,
        dora=dora,
        trainable=extra,
        gradient_checkpointing=checkpointing,
        reentrant_checkpointing=reentrant,
        checkpoint_every_n_layers=every_n,
        attn_implementation=_attention(config, base),
        observed=True,
    )
    if not trainable:
        notes.append("no parameter requires grad: nothing is being trained")
    exact = None if lora is not None else frozenset(trainable)
    return ObservedSetup(config, setup, exact, numel, quantized, tuple(notes), adapter)


def _is_adapter(name: str) -> bool:
    return ".lora_" in name or ".lora_magnitude_vector." in name


def _lora_layout(model: Any, model_type: str):
    """(rank, target module names, dropout, dora, adapter name) of the active LoRA adapter, or None."""
    peft_config = getattr(model, "peft_config", None)
    if not peft_config:
        return None
    adapter = getattr(model, "active_adapter", None) or next(iter(peft_config))
    adapter = adapter[0] if isinstance(adapter, (list, tuple)) else adapter
    cfg = peft_config[adapter]
    if getattr(cfg, "peft_type", None) is not None and str(getattr(cfg.peft_type, "value", cfg.peft_type)) != "LORA":
        return None
    targets, params = set(), set()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}):
            if type(module).__name__ == "ParamWrapper":
                params.add(module.parameter_name if module.parameter_name != "weight" else "gate.weight")
            else:
                targets.add(strip_wrappers(name))
    # parameter-LoRA on fused MoE experts: name it by the v4 projections peft mapped onto it
    mapping = PEFT_MOE_PARAM_TARGETS.get(model_type, {})
    leaves = {old for old, new in mapping.items() if new in params}
    dropout = float(getattr(cfg, "lora_dropout", 0.0) or 0.0)
    return int(cfg.r), tuple(sorted(targets | leaves)), dropout, bool(getattr(cfg, "use_dora", False)), adapter


def _checkpointing(model: Any) -> tuple[bool, bool, int]:
    """(on, reentrant, every_n_layers) from the flags transformers sets on its layers."""
    if not getattr(model, "is_gradient_checkpointing", False):
        return False, False, 1
    flags, reentrant = [], False
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is not None and type(module).__name__.endswith(("Layer", "Block", "DecoderLayer")):
            flags.append(bool(getattr(module, "gradient_checkpointing", False)))
            reentrant = bool(getattr(func, "keywords", {}).get("use_reentrant", False))
    on = [i for i, f in enumerate(flags) if f]
    every_n = on[1] - on[0] if len(on) > 1 else (len(flags) or 1)
    return bool(on), reentrant, max(1, every_n)


def _attention(config: dict[str, Any], model: Any) -> str:
    impl = config.get("_attn_implementation") or getattr(model.config, "_attn_implementation", None) or "sdpa"
    if "flash" in impl:
        return "flash_attention_3" if "3" in impl else "flash_attention_2"
    return impl if impl in ("eager", "sdpa") else "sdpa"
