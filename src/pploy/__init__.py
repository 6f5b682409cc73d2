"""pploy: a deploy lock manager whose logs stream live to every viewer."""

__version__ = "0.1.0"
