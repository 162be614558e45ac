"""A throw-away systemd, booted in a container, for tests that need a real service manager."""

from tests.systemd_lab.container import Lab, LabError, unavailable_reason

__all__ = ["Lab", "LabError", "unavailable_reason"]
