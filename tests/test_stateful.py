"""MemFS passes the ready-made state machine at several minors."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from fusewire.examples.memfs import MemFS
from fusewire.testing.statemachine import make_state_machine

_EXAMPLES = int(os.environ.get("FUSEWIRE_STATEFUL_EXAMPLES", "25"))
_SETTINGS = settings(max_examples=_EXAMPLES, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])

TestMemFS19 = make_state_machine(MemFS, minor=19).TestCase
TestMemFS19.settings = _SETTINGS
TestMemFS31 = make_state_machine(MemFS, minor=31).TestCase
TestMemFS31.settings = _SETTINGS
TestMemFS36 = make_state_machine(MemFS, minor=36).TestCase
TestMemFS36.settings = _SETTINGS
TestMemFS40 = make_state_machine(MemFS, minor=40).TestCase
TestMemFS40.settings = _SETTINGS
TestMemFS45 = make_state_machine(MemFS, minor=45).TestCase
TestMemFS45.settings = _SETTINGS
