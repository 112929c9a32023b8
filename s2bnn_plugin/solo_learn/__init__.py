"""The solo-learn adapter: its pin (:mod:`.pin`), finding it (:mod:`.locate`), its scripts'
command lines (:mod:`.command`), its registries (:mod:`.registry`), installing it
(:mod:`.install`), checking a run config before it starts (:mod:`.preflight`) and refusing to
resume a run trained with other settings (:mod:`.resume`). Nothing here imports torch or
solo-learn at module level."""
