"""The run configuration: frozen dataclasses with field metadata (schema), the command-line flags generated from it
(options) and the named recipes (presets)."""
