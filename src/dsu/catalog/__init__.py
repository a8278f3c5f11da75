"""Models by name: the shipped catalog, verified downloads into the models dir, and the lookup that
lets `"model": NAME` find what was installed. Nothing here touches the network on import."""
from .catalog import Catalog, Entry, FileSpec, load, read, shipped
from .store import default_models_dir, install, installed, remove, resolve, verify

__all__ = ["Catalog", "Entry", "FileSpec", "load", "read", "shipped", "default_models_dir", "install",
           "installed", "remove", "resolve", "verify"]
