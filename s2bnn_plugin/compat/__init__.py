"""The bottom layer: what every other layer needs of solo-learn, and nothing of the plugin.

- :mod:`.solo`: the pinned solo-learn commit, finding solo-learn (without importing it), its
  scripts and their command lines, quoting Hydra values, the plugin's configs folder, adding
  objects to solo-learn's registries.
- :mod:`.install`: ``s2bnn setup-solo``, which puts the pinned solo-learn tree on ``sys.path``.
- :mod:`.preflight`: checks a solo-learn config against the hardware before a run starts.
- :mod:`.resume`: refuses to continue (auto-resume, ``resume_from_checkpoint``) a checkpoint
  whose run was trained with other settings.

Nothing here imports torch or solo-learn at module level.
"""
