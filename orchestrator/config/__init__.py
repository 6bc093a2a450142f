"""The configuration: typed sections, the YAML file and dotted overrides, validation, and the generated reference (docs/CONFIG.md)."""
