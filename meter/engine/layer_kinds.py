"""One decoder layer of each kind: what the measured path runs instead of the whole stack.

A 61-layer DeepSeek-V3 has two kinds of layer (dense and mixture-of-experts), a 26-layer Gemma 3 two (sliding and
global attention). Running every layer of the meta-device copy under FlopCounterMode costs about 0.15 ms per op,
so measuring the whole stack of a 400B-class model took 10 s; measuring one layer of each kind and multiplying by
how many layers it stands for gives the same count in a fraction of it.

Two layers are of one kind when everything that decides their matrix multiplications is equal: their module tree
(types, parameter and buffer shapes and dtypes, which parameters train), the simple attributes of every submodule
(sliding or not, rope or not, …) except the layer's own index, the sliding window the config gives it, and whether
a trainable parameter sits below it (then its input needs a gradient too). The first layer is always a kind of its
own: whether its input needs a gradient depends on the embeddings and on hooks, not on the layers.

While a step is measured, the other layers are replaced by stand-ins that hand the hidden states through unchanged
(same output structure as the real layer's, same attributes for the model's own forward to read); they compute
nothing, so a layer kind's measured FLOPs times its multiplicity is the stack's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

# attributes that number a layer rather than describe it
_INDEX_NAMES = frozenset({"layer_idx", "layer_id", "layer_index", "layer_number", "block_idx", "idx"})
_SIMPLE = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Stack:
    """The decoder layers, by kind: the representatives (module name, sliding window, layers each stands for), for
    every other layer the index of the representative that stands in for it, and each kind's second layer."""

    name: str
    representatives: tuple[tuple[str, int | None, int], ...]
    stands_in: tuple[tuple[int, int], ...] = ()

    def second(self, representative: str) -> int:
        """The index of the second layer of ``representative``'s kind."""
        rep = int(representative.rsplit(".", 1)[1])
        return next(i for i, r in self.stands_in if r == rep)


def read_stack(model, name: str, windows: list[int | None]) -> Stack:
    """Group the layers of the ModuleList ``name`` of ``model`` (prepared as it trains) by kind."""
    layers = list(model.get_submodule(name).children())
    kinds: dict[Any, int] = {}
    count: dict[int, int] = {}
    stands_in = []
    trainable_below = False
    for i, layer in enumerate(layers):
        key = ("first",) if i == 0 else (windows[i], trainable_below, _signature(layer))
        rep = kinds.setdefault(key, i)
        count[rep] = count.get(rep, 0) + 1
        if rep != i:
            stands_in.append((i, rep))
        trainable_below = trainable_below or any(p.requires_grad for p in layer.parameters())
    reps = tuple((f"{name}.{i}", windows[i], count[i]) for i in sorted(count))
    return Stack(name, reps, tuple(stands_in))


def _signature(layer) -> tuple:
    parts = []
    for sub_name, module in layer.named_modules():
        attrs = tuple(
            sorted(
                (k, v)
                for k, v in vars(module).items()
                if not k.startswith("_") and k not in _INDEX_NAMES and isinstance(v, _SIMPLE)
            )
        )
        params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in module.named_parameters(recurse=False))
        buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers(recurse=False))
        parts.append((sub_name, type(module).__module__, type(module).__qualname__, attrs, params, buffers))
    return tuple(parts)


@contextlib.contextmanager
def representatives_only(model, stack: Stack | None, *, second: str | None = None):
    """Run only the representatives (and the second layer of ``second``'s kind): every other layer is a stand-in
    while the block runs, then put back."""
    if stack is None or not stack.stands_in:
        yield
        return
    import torch

    modules = model.get_submodule(stack.name)
    layers = list(modules.children())
    last: dict[int, Any] = {}

    def remember(index):
        def hook(_module, _args, output):
            last[index] = output

        return hook

    runs = {stack.second(second)} if second else set()
    stood_in = [(i, rep) for i, rep in stack.stands_in if i not in runs]
    hooks = [layers[rep].register_forward_hook(remember(rep)) for rep in {r for _, r in stood_in}]

    class StandIn(torch.nn.Module):
        """Hands the hidden states through in the structure its representative returns; reads like the layer."""

        def __init__(self, real, rep: int):
            super().__init__()
            object.__setattr__(self, "_real", real)
            object.__setattr__(self, "_rep", rep)

        def __getattr__(self, item):
            try:
                return super().__getattr__(item)
            except AttributeError:
                return getattr(object.__getattribute__(self, "_real"), item)

        def forward(self, *args, **kwargs):
            # a new tensor object (a view, no FLOPs): FlopCounterMode tells modules apart in backward by hooks on
            # their input and output tensors, which must not be the same object
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            hidden = hidden.view_as(hidden)
            out = last[self._rep]
            if isinstance(out, (tuple, list)):
                return type(out)((hidden, *out[1:]))
            if isinstance(out, torch.Tensor):
                return hidden
            raise TypeError(f"decoder layer output {type(out).__name__} cannot be stood in for")

    for i, rep in stood_in:
        modules[i] = StandIn(layers[i], rep)
    try:
        yield
    finally:
        for i, _ in stood_in:
            modules[i] = layers[i]
        for h in hooks:
            h.remove()
