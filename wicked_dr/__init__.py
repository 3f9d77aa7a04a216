"""wicked-dr: backup and disaster recovery for the wicked.haufe.io API portal."""

__version__ = "0.1.0"
