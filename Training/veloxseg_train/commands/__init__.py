"""One module per `veloxseg-train` sub-command; each defines `add_arguments(parser)` and `run(args) -> int`."""
