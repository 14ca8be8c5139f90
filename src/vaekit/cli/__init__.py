"""The `vaekit` command: thin, arguments -> config -> one library call (main)."""
