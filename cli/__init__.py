"""The ``lifecycle`` console script: ``main.py`` assembles the command groups of this package."""
