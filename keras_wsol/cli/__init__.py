"""The command-line programs: ``train`` and ``evaluate`` (``wsol-train``, ``wsol-evaluate`` when installed)."""
