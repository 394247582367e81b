"""The run's settings and what they resolve to, shared by the stages.

- :mod:`~kdpipe.settings.sections`: the config sections the stages read (``--set section.key=...``);
  importing it registers them, which :mod:`kdpipe.stages` does before any stage.
- :mod:`~kdpipe.settings.teachers`: the teachers of a run (``teacher.members``) and their upstream folders.
- :mod:`~kdpipe.settings.inputs`: what a stage reads besides its config: upstream folders, the
  dataset and its identity, the device, the training transform.

A component: it may import other components (the methods' configs) and foundations, never a stage.
"""
