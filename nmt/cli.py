"""Parse ``key=value`` command lines into a typed dataclass.

Used by the entry points that are not training runs (``nmt.evaluate``, ``nmt.translate``):
they take the same ``key=value`` / ``a.b=value`` syntax as Hydra overrides but need no run
directory, multirun or launcher. Unknown keys and values of the wrong type become a
:class:`~nmt.errors.UserError` naming the key; ``validate()`` on the dataclass (if any) runs last.
"""

from __future__ import annotations

from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmt.errors import UserError

T = TypeVar("T")


def parse_overrides(schema: type[T], argv: list[str]) -> T:
    """Build ``schema`` from ``argv`` (``["ckpt=run/checkpoints/best.pt", "beam=5"]``)."""
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise UserError(f"bad argument {arg!r}: write key=value (e.g. beam=4)")
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(argv)))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        where = f" for key {key!r}" if key else ""
        raise UserError(f"bad command-line value{where}: {msg}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj  # type: ignore[return-value]
