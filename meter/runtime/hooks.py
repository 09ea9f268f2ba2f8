"""The forward hooks that see every pass of a model: the outermost forward of a pass is handed on, once.

Hooks go on the model and on its base under a PEFT wrapper (``generate()`` calls the base directly). A forward
nested in a counted one (PEFT -> base model) is not handed on again. The nesting depth is kept per thread:
``nn.DataParallel`` runs its replicas' forwards (and these hooks) in threads, each on its slice of the batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

OnPass = Callable[[Any, tuple, dict[str, Any]], None]  # (module, args, kwargs) of an outermost forward


class PassHooks:
    """The hooks of every model a meter counts; ``remove()`` takes them all off."""

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._local = threading.local()  # depth > 0 inside a handed-on forward

    def __bool__(self) -> bool:
        return bool(self._handles)

    def install(self, model: Any, on_pass: OnPass) -> None:
        """Hook ``model`` (and its base under a PEFT wrapper): ``on_pass`` is called before each outermost forward."""
        from meter.runtime.introspect import unwrap

        top = unwrap(model)
        targets = [top]
        base = top.get_base_model() if hasattr(top, "get_base_model") else top
        if base is not top:
            targets.append(base)
        for target in targets:
            self._handles.append(
                target.register_forward_pre_hook(lambda m, a, k: self._pre_hook(m, a, k, on_pass), with_kwargs=True)
            )
            self._handles.append(target.register_forward_hook(self._post_hook, with_kwargs=True, always_call=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _pre_hook(self, module, args, kwargs, on_pass: OnPass):
        depth = self._local.depth = getattr(self._local, "depth", 0) + 1
        if depth == 1:  # not nested in a counted pass
            on_pass(module, args, kwargs)
        return None

    def _post_hook(self, module, args, kwargs, output):
        self._local.depth = max(getattr(self._local, "depth", 1) - 1, 0)
        return None
