"""The command line: ``dsexport run``, ``validate``, ``check`` and ``schedule`` on the YAML that ``kubectl apply``
takes, and local mode. The only layer that speaks of flags such as ``--at``."""

from dsexport.cli.commands import main

__all__ = ["main"]
