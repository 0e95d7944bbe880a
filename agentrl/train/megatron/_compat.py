"""Optional-dependency guard: megatron-core is imported only by this package, and only on use."""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'megatron-core>=0.16'   (or: pip install 'agentrl[megatron]')"


class MegatronNotInstalledError(ImportError):
    """megatron-core is missing; the message says how to install it."""


def megatron_available() -> bool:
    return importlib.util.find_spec("megatron") is not None and importlib.util.find_spec("megatron.core") is not None


def require_megatron() -> None:
    """Raise :class:`MegatronNotInstalledError` with the install command when megatron-core is absent."""
    if not megatron_available():
        raise MegatronNotInstalledError(
            f"the Megatron trainer backend needs megatron-core, which is not installed; install it with "
            f"`{INSTALL_HINT}`, or use the torch backend (--trainer torch)"
        )


def megatron_version() -> tuple[int, int]:
    """(major, minor) of the installed megatron-core."""
    require_megatron()
    from megatron.core import package_info

    return int(package_info.MAJOR), int(package_info.MINOR)
