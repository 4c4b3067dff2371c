"""The command line: one thin module per command (flags → library call → exit status)."""
