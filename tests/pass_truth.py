"""Independent truth for the parts of a run: ``FlopCounterMode`` around exactly the passes of each kind.

Nothing here reads the meter. The kinds are told apart at their call sites, as the trainers make them:

- ``generation``: everything inside the policy's ``generate()`` (prefill and cached decode steps);
- ``reference_forward``: forwards of the policy while PEFT's ``disable_adapter()`` (TRL's ``use_adapter``) is
  active, and every forward of a separate reference model;
- ``reward_forward``: every forward of a separate reward model;
- ``policy_forward``: other forwards of the policy with autograd off;
- ``training``: what remains of the whole run (training forwards and their backward passes).

One ``FlopCounterMode`` spans the whole run; each forward of a kind is measured by a nested one (nested modes both
count). Models must run eager attention and eager experts: ``FlopCounterMode`` counts 0 for CPU SDPA and
grouped-mm experts. It also has no formula for the in-place ``addmm_``, with which TRL's fused LM head computes
its gradients: the counters here add torch's own ``addmm`` formula for it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any


def flop_counter():
    """FlopCounterMode, with torch's addmm formula (2·m·k·n) for the in-place addmm_ as well, less the rotary
    frequency table (``tests.reference.truth_counter``)."""
    import torch

    from tests.reference import truth_counter

    def addmm_(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
        (m, k), (_, n) = a_shape, b_shape
        return 2 * m * k * n

    return truth_counter(custom_mapping={torch.ops.aten.addmm_: addmm_})


def step_truth(model, seq: int) -> int:
    """FLOPs of one training step of ``model`` on one unpadded row of ``seq`` random tokens, by ``flop_counter``."""
    import torch

    ids = torch.randint(3, 500, (1, seq))
    counter = flop_counter()
    with counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().sum().backward()
    return counter.get_total_flops()


class PassTruth:
    def __init__(self) -> None:
        self.parts: dict[str, int] = defaultdict(int)
        self.total = flop_counter()
        self._inside = 0  # > 0 within a measured forward or generate()
        self._mode: Any = None
        self._reference = 0  # > 0 while adapters are disabled

    # -- instrumenting -----------------------------------------------------------------------------------------

    def policy(self, model: Any) -> PassTruth:
        """Measure the policy: its forwards (top and PEFT base), its generate(), its disable_adapter()."""
        targets = [model]
        if hasattr(model, "get_base_model"):
            targets.append(model.get_base_model())
            original = model.disable_adapter

            @contextlib.contextmanager
            def disable_adapter(*args, **kwargs):
                self._reference += 1
                try:
                    with original(*args, **kwargs):
                        yield
                finally:
                    self._reference -= 1

            model.disable_adapter = disable_adapter
        for target in targets:
            self._hook(target, None)
            generate = getattr(target, "generate", None)
            if generate is None:  # a reward model
                continue

            def measured_generate(*args, _generate=generate, **kwargs):
                return self._measure("generation", lambda: _generate(*args, **kwargs))

            target.generate = measured_generate
        return self

    def model(self, model: Any, kind: str) -> PassTruth:
        """Measure a separate model (reference, reward): every forward is of ``kind``."""
        self._hook(model, kind)
        return self

    def _hook(self, module: Any, kind: str | None) -> None:
        def pre(m, args, kwargs):
            self._inside += 1
            if self._inside > 1:
                return
            self._kind = kind or self._policy_kind()
            self._mode = flop_counter()
            self._mode.__enter__()

        def post(m, args, kwargs, output):
            self._inside -= 1
            if self._inside == 0 and self._mode is not None:
                self._mode.__exit__(None, None, None)
                if self._kind != "training":
                    self.parts[self._kind] += self._mode.get_total_flops()
                self._mode = None

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post, with_kwargs=True, always_call=True)

    def _policy_kind(self) -> str:
        import torch

        if self._reference:
            return "reference_forward"
        return "training" if torch.is_grad_enabled() else "policy_forward"

    def _measure(self, kind: str, call):
        if self._inside:
            return call()
        self._inside += 1
        try:
            with flop_counter() as mode:
                out = call()
            self.parts[kind] += mode.get_total_flops()
            return out
        finally:
            self._inside -= 1

    # -- running -----------------------------------------------------------------------------------------------

    def __enter__(self) -> PassTruth:
        self.total.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.total.__exit__(*exc)
        forward_only = sum(v for k, v in self.parts.items() if k != "training")
        self.parts["training"] = self.total.get_total_flops() - forward_only
