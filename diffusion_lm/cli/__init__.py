"""Command-line entry points; nothing imports this package."""
