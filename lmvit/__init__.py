"""lmvit: glue shared by the entry points (config checks, printing); models live in
``lightning_modules``, data in ``datamodules``."""

from lmvit import resolvers as _resolvers  # noqa: E402,F401  (the ${lmvit.*} resolvers of conf/)
