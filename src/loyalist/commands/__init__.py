"""Command modules of each capability, registered on the `loyalist` app when `loyalist.cli` is imported.

A module here imports `app` (and the shared helpers) from `loyalist.cli` and decorates its commands with
`@app.command()`; importing this package imports every module in it.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
