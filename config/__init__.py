"""labctl.config: the lab description, loaded from TOML and validated with clear errors."""

from .drivers import DriverNotFound, registered_drivers, resolve_driver, resolve_factory
from .errors import ConfigError, Problem
from .load import load, parse
from .schema import Device, Emulator, Group, Host, Lab, Supervision, Unit

__all__ = ["ConfigError", "Device", "DriverNotFound", "Emulator", "Group", "Host", "Lab", "Problem",
           "Supervision", "Unit", "load", "parse", "registered_drivers", "resolve_driver", "resolve_factory"]
