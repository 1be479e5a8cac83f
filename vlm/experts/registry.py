"""The expert registry: ``name -> {backend -> class}``, filled by the modules of ``vlm/experts/zoo/``.

Adding an expert = adding one file to ``vlm/experts/zoo/`` with an ``@register``-ed :class:`Expert` subclass.
An expert name may have several backends (``segmentation``: ``slic`` offline or ``hf`` with a checkpoint;
``ocr``: ``rapidocr`` or ``tesseract``). Which one runs: ``cfg.backends[name]`` if set, else ``hf`` when
``cfg.sources`` has the name, else the default offline backend.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from vlm.experts.base import Expert, ExpertError
from vlm.experts.config import ExpertsConfig

_REGISTRY: dict[str, dict[str, type[Expert]]] = {}
_DEFAULT: dict[str, str] = {}
_loaded = False


def register(cls: type[Expert] | None = None, *, default: bool = False):
    """Class decorator: make ``cls`` available as ``cls.name`` / ``cls.backend``."""

    def wrap(c: type[Expert]) -> type[Expert]:
        backends = _REGISTRY.setdefault(c.name, {})
        if c.backend in backends and backends[c.backend] is not c:
            raise ValueError(f"expert {c.name!r} backend {c.backend!r} registered twice")
        backends[c.backend] = c
        if default or c.name not in _DEFAULT:
            _DEFAULT[c.name] = c.backend
        return c

    return wrap(cls) if cls is not None else wrap


def _load_zoo() -> None:
    global _loaded
    if _loaded:
        return
    import vlm.experts.zoo as zoo

    for mod in pkgutil.iter_modules(zoo.__path__):
        importlib.import_module(f"{zoo.__name__}.{mod.name}")
    _loaded = True


def available() -> dict[str, list[str]]:
    """Every registered expert name with its backends."""
    _load_zoo()
    return {name: sorted(b) for name, b in sorted(_REGISTRY.items())}


def resolve(name: str, cfg: ExpertsConfig) -> type[Expert]:
    """The class that computes expert ``name`` under ``cfg``."""
    _load_zoo()
    if name not in _REGISTRY:
        raise ExpertError(f"unknown expert {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    backends = _REGISTRY[name]
    backend = cfg.backends.get(name) or ("hf" if name in cfg.sources and "hf" in backends else _DEFAULT[name])
    if backend not in backends:
        raise ExpertError(f"expert {name!r} has no backend {backend!r}; available: {', '.join(sorted(backends))}")
    return backends[backend]


def build(name: str, cfg: ExpertsConfig, device: str = "cpu") -> Expert:
    return resolve(name, cfg)(cfg, device=device, source=cfg.sources.get(name))


def order(names: Iterable[str], cfg: ExpertsConfig, on_disk: Iterable[str] = ()) -> list[str]:
    """Experts in an order that puts dependencies first (stable otherwise).

    A hard requirement (``requires``) must be in ``names`` or already computed (``on_disk``); otherwise an
    ExpertError says what to add. Soft ones (``after``) only constrain the order when present.
    """
    names = list(dict.fromkeys(names))
    present = set(names)
    on_disk = set(on_disk)
    deps: dict[str, set[str]] = {}
    for n in names:
        cls = resolve(n, cfg)
        for r in cls.requires:
            if r not in present and r not in on_disk:
                raise ExpertError(f"expert {n!r} needs {r!r}: add {r!r} to the experts list "
                                  f"(or compute {r!r} into the same labels URI first)")
        deps[n] = {d for d in (*cls.requires, *cls.after) if d in present}
    out: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in out:
            return
        if n in visiting:
            raise ExpertError(f"dependency cycle through expert {n!r}")
        visiting.add(n)
        for d in sorted(deps[n], key=names.index):
            visit(d)
        visiting.discard(n)
        out.append(n)

    for n in names:
        visit(n)
    return out
