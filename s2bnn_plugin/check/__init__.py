"""Checking a packed network against its float model: the agreement and its bounds
(:mod:`.agreement`), and the commands that enforce them (:mod:`.commands`: ``s2bnn check``,
``s2bnn pack``)."""
