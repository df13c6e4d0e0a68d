"""The modes `launch.py` runs, one module each, every one with `validate(config)` (refuse bad
settings in one line, before anything compiles) and `run(config, workdir)`.

No mode imports another; nothing outside this package imports a mode.
"""
