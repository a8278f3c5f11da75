"""`dsu` subcommands, one module each with `add_parser(subparsers)` (which sets `run`) and `run(args)`."""
