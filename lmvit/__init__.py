"""lmvit: glue shared by the entry points (config checks, printing); models live in
``lightning_modules``, data in ``datamodules``."""
