"""The command line's garbage collector: off while a command builds what lives as long as the
process, back on for a long run (an apply that waits minutes makes garbage all along)."""
from __future__ import annotations

import gc

from orchestrator.cli import collect_later


def test_the_collector_is_off_at_first_and_back_on_for_a_long_run():
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    try:
        timer = collect_later(0.05)
        assert not gc.isenabled()
        timer.join(timeout=10)
        assert gc.isenabled() and gc.get_threshold() == (10_000, 50, 100)
    finally:
        gc.set_threshold(*thresholds)
        (gc.enable if enabled else gc.disable)()
