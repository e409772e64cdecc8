"""astrodag: from raw astronomical archive data to classifiers, tables and figures."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("astrodag")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from astrodag.errors import AstrodagError, ConfigError, InputDataError

__all__ = ["AstrodagError", "ConfigError", "InputDataError", "__version__"]
