"""The built-in depth methods, registered: import this (not the registry alone) to look a method up.

Each method's package registers itself (`modetune.method_base.register_method`); this module only makes
sure the built-in ones are imported. A method from outside modetune registers the same way, from its own
package.
"""

from __future__ import annotations

import modetune.mod
import modetune.mode  # noqa: F401
from modetune.method_base import MethodSpec, get_method, register_method, registered_methods, saved_method

__all__ = ["MethodSpec", "get_method", "register_method", "registered_methods", "saved_method"]
