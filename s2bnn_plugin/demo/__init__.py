"""``s2bnn demo``: S2-BNN's comparison in miniature on a CPU (see :mod:`.pipeline`)."""

from s2bnn_plugin.demo.pipeline import STAGES, STUDENTS, DemoConfig, DemoError, run_demo

__all__ = ["STAGES", "STUDENTS", "DemoConfig", "DemoError", "run_demo"]
