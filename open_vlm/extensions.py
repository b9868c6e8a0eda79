"""User extension modules (`model.module`): imported before a model is built, so they can register their own
model kinds (`register_model`), processors (`register_task`), losses (`register_loss`) or extractors."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

log = logging.getLogger(__name__)


def import_extension(name: str | None, key: str = "model.module") -> ModuleType | None:
    """Import module `name` (once; None or "" does nothing); a ValueError naming `key` when it cannot be imported."""
    if not name:
        return None
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ValueError(
            f"{key}: cannot import '{name}' ({err}); put the folder holding it on PYTHONPATH or pip install it"
        ) from None
    log.info("%s: imported %s (%s)", key, name, getattr(module, "__file__", "namespace package"))
    return module
