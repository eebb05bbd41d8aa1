"""Op-level profiles under torch.profiler: per op, the call count and its share of the self CPU
time. Shares and counts stay informative on a loaded machine; absolute times do not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.profiler import ProfilerActivity, profile


def op_rows(prof: Any) -> list[tuple[str, int, float]]:
    """``(op, calls, self CPU µs)`` of every op in a finished profile, costliest first."""
    rows = [(e.key, int(e.count), float(e.self_cpu_time_total)) for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r[2])


def op_table(prof: Any, title: str, top: int) -> str:
    """The ``top`` ops of a profile as a table: calls, share of the self CPU time; then totals."""
    rows = op_rows(prof)
    total = sum(r[2] for r in rows) or 1.0
    lines = [f"== {title}: {sum(r[1] for r in rows)} op calls, {total / 1e3:.0f} ms self CPU",
             f"  {'op':<44} {'calls':>6} {'share':>7}"]
    lines += [f"  {name[:44]:<44} {calls:>6} {100 * us / total:>6.1f}%" for name, calls, us in rows[:top]]
    return "\n".join(lines)


def profile_layer(step: Callable[[], None], title: str, top: int) -> str:
    """One warm-up ``step()``, then one profiled: its op table."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return op_table(prof, title, top)
